"""ONNX export of a classifier folder, checked for parity, and the ONNX Runtime backend that runs it.

The export uses PyTorch's TorchScript-based exporter (``dynamo=False``) on the model loaded with eager
attention. Measured on all-MiniLM-L6-v2 (torch 2.13, onnxruntime 1.32, a shared 2-core CPU, so single
noisy timings): it needs no package beyond ``onnx``, exports in ~2 s, and its 556-node graph (273 after
ONNX Runtime's own optimisations) ran a 32x256 batch as fast as the alternatives or faster. The dynamo
exporter gives a smaller graph (244 nodes) but needs ``onnxscript`` + ``onnx-ir``, exports in ~13 s and
was not faster; it stays available as ``exporter="dynamo"``. SDPA attention exports to a larger graph
(709 nodes, mask ``Where`` chains) that ran slower. ONNX Runtime's offline transformer optimizer fuses
the TorchScript graph into Attention/SkipLayerNorm ops, but was not measurably faster: not used.

The exported graph runs the last encoder layer for [CLS] only (``predict.cls_only_last_layer``; the
node counts above are from before that change).

An export is only accepted once ONNX Runtime reproduces PyTorch's logits on shapes other than the
export example (dynamic axes really dynamic, padding masked): :class:`ExportParityError` otherwise.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from bertsent.config import DEFAULT_ATOL, DEFAULT_OPSET, EXPORTERS, MAX_OPSET, MIN_OPSET, ExportConfig
from bertsent.errors import ExportError, SettingsError, first_line
from bertsent.folder import (
    COMPRESSION_FILE,
    INPUT_NAMES,
    METRICS_FILE,
    ONNX_FILE,
    OUTPUT_NAME,
    check_source,
    clear_weights,
    copy_model_files,
    weights_bytes,
)
from bertsent.modeling.parity import PARITY_SHAPES, Candidate, parity_check, random_batch
from bertsent.runtime import THREADS_ENV, require_onnxruntime, session_options

if TYPE_CHECKING:
    import torch

log = logging.getLogger("bertsent.export")

EXAMPLE_SHAPE = (2, 16)
"""(batch, sequence) of the traced example; the parity check (``PARITY_SHAPES``) uses other shapes."""


def _load_eager(model_dir: Path) -> torch.nn.Module:
    from bertsent.modeling.loading import load_classifier

    model = load_classifier(model_dir)
    # Eager attention: SDPA exports to a larger graph (mask Where chains) that ORT does not simplify.
    # Switched after loading, so pruned folders (built by bertsent, not from_pretrained) get it too.
    model.set_attn_implementation("eager")
    return model.float().eval()


def _example(vocab_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """The traced example: random token ids with the last row padded, as in the parity check."""
    import torch

    ids, mask = random_batch(vocab_size, pad_id, *EXAMPLE_SHAPE, seed=0)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def _torch_export(model: torch.nn.Module, example: dict[str, torch.Tensor], path: Path, opset: int, exporter: str):
    import torch

    args = (example["input_ids"], example["attention_mask"])
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is legacy and about traced shape arithmetic in the
        # mask helpers; the parity check below is what decides whether the graph is right.
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError as e:
                raise ExportError("the dynamo exporter needs onnxscript: pip install onnxscript") from e
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            program = torch.onnx.export(
                model,
                args,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}),
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                model,
                args,
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    OUTPUT_NAME: {0: "batch"},
                },
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )


def _onnx_logits(onnx_path: Path) -> Candidate:
    """ONNX Runtime on the CPU as the parity check's candidate: ``(input_ids, attention_mask) -> logits``."""
    ort = require_onnxruntime()
    session = ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"])
    return lambda ids, mask: session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, (ids, mask), strict=True)))[0]


def op_counts(onnx_path: Path) -> dict[str, int]:
    """Node count per op type of an ONNX graph (``domain::op`` for non-standard domains)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    counts = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def export_onnx(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    exporter: str = "torchscript",
    parity_shapes: tuple[tuple[int, int], ...] = PARITY_SHAPES,
    write_card: bool = True,
) -> Path:
    """Export ``model_dir`` to ``output_dir/model.onnx`` plus a loadable folder; returns ``output_dir``.

    Nothing is written unless ONNX Runtime matches PyTorch within ``atol`` on ``parity_shapes``.
    """
    if exporter not in EXPORTERS:
        raise SettingsError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise SettingsError(f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
    if not atol > 0:
        raise SettingsError(f"atol must be > 0, got {atol!r}")
    require_onnxruntime()
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ExportError("onnx is not installed: pip install onnx") from e
    source = check_source(model_dir)
    output_dir = Path(output_dir)
    if output_dir.resolve() == source.resolve():
        raise ExportError(f"--output-dir {output_dir} is the source folder; choose another folder")

    from bertsent.modeling.cls_only import cls_only_last_layer
    from bertsent.modeling.loading import load_tokenizer

    started = time.perf_counter()
    model = _load_eager(source)
    # The graph computes the last layer for [CLS] only (all the head reads); parity is checked against
    # the untouched model, so the export is held to the plain forward's logits.
    exported = copy.deepcopy(model)
    cls_only = cls_only_last_layer(exported)
    pad_id = load_tokenizer(source).pad_token_id or 0
    with tempfile.TemporaryDirectory(prefix="bertsent-export-") as tmp:
        staged = Path(tmp) / ONNX_FILE
        example = _example(model.config.vocab_size, pad_id)
        try:
            _torch_export(exported, example, staged, opset, exporter)
        except ExportError:
            raise
        except Exception as e:  # exporter failures come as many types; the first line says what broke
            raise ExportError(f"torch.onnx.export ({exporter}) failed for {source}: {first_line(e)}") from e
        export_seconds = time.perf_counter() - started
        parity = parity_check("ONNX Runtime", _onnx_logits(staged), model, atol, pad_id, parity_shapes)
        output_dir.mkdir(parents=True, exist_ok=True)
        clear_weights(output_dir)
        shutil.move(str(staged), output_dir / ONNX_FILE)
    copy_model_files(source, output_dir)
    counts = op_counts(output_dir / ONNX_FILE)
    record = {
        "method": "onnx-export",
        "source": str(source),
        "exporter": exporter,
        "opset": opset,
        "attn_implementation": "eager",
        "last_layer": "cls-only" if cls_only else "full",
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "dynamic_axes": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]},
        "parity": parity,
        "source_weights_bytes": weights_bytes(source),
        "onnx_bytes": (output_dir / ONNX_FILE).stat().st_size,
        "nodes": sum(counts.values()),
        "op_counts": counts,
        "export_seconds": round(export_seconds, 2),
        "versions": onnx_versions(),
    }
    (output_dir / COMPRESSION_FILE).write_text(json.dumps(record, indent=2))
    metrics = {
        "parity_max_abs_diff": parity["max_abs_diff"],
        "onnx_bytes": record["onnx_bytes"],
        "source_weights_bytes": record["source_weights_bytes"],
        "nodes": record["nodes"],
    }
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if write_card:
        write_export_card(output_dir, record)
    log.info(
        "exported %s to %s (%s, opset %d): parity max |diff| %.2g, %.1f MB",
        source,
        output_dir / ONNX_FILE,
        exporter,
        opset,
        parity["max_abs_diff"],
        record["onnx_bytes"] / 1e6,
    )
    return output_dir


def onnx_versions() -> dict[str, str]:
    import onnx
    import torch
    import transformers

    import bertsent

    ort = require_onnxruntime()
    return {
        "bertsent": bertsent.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


CLS_ONLY_NOTE = "The last layer is computed for the [CLS] position only (all the classifier reads)."


def write_export_card(output_dir: Path, record: dict) -> Path:
    """README.md of an export folder: what was done and what was measured."""
    from bertsent.folder import card_base_model, write_card

    parity = record["parity"]
    shapes = ", ".join(f"{s['shape'][0]}x{s['shape'][1]}: {s['max_abs_diff']:.2g}" for s in record["parity"]["shapes"])
    measured = f"""| | |
|---|---|
| Max abs logit difference vs PyTorch | {parity["max_abs_diff"]:.3g} (tolerance {parity["atol"]:g}) |
| Per shape (batch x tokens) | {shapes} |
| ONNX file | {_mb(record["onnx_bytes"])} (source weights {_mb(record["source_weights_bytes"])}) |
| Graph nodes | {record["nodes"]} |"""
    return write_card(
        output_dir,
        title=f"ONNX export of `{record['source']}`",
        summary=f"""Exported with `torch.onnx.export` ({record["exporter"]} exporter, opset {record["opset"]}, \
eager attention);
inputs `input_ids`, `attention_mask` (int64, dynamic batch and sequence), output `logits`.
{CLS_ONLY_NOTE if record.get("last_layer") == "cls-only" else ""}""",
        sections={
            "Measured": measured,
            "Use": f'`bertsent predict --model {output_dir} "A wonderful, moving film."` runs it with ONNX Runtime\n'
            f"(threads: `${THREADS_ENV}`, default one per physical core). Details: `compression.json`.",
        },
        base_model=card_base_model(Path(record["source"])),
        library_name="onnx",
        tags=["onnx"],
        versions=record.get("versions"),
    )


def export(config: ExportConfig) -> Path:
    """``bertsent export``: ONNX (:func:`export_onnx`), or a TF SavedModel / ``.keras`` file (needs the
    ``keras`` extra); every format is parity-checked against PyTorch before anything is written."""
    if config.format == "onnx":
        return export_onnx(
            config.model, config.output_dir, opset=config.opset, atol=config.atol, exporter=config.exporter
        )
    from bertsent.keras.export import export_keras_model

    return export_keras_model(
        config.model, config.output_dir, fmt=config.format, strings=config.strings, atol=config.atol
    )
