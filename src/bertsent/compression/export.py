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

``--format openvino`` (:func:`export_openvino`) converts that parity-checked ONNX graph with
``openvino.convert_model`` and saves an fp32 IR (``openvino_model.xml`` + ``.bin``), held to the same
parity check with OpenVINO compiled for f32 inference.
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

from bertsent.compression.stage import StageResult, finish
from bertsent.config import DEFAULT_ATOL, DEFAULT_OPSET, EXPORTERS, ExportConfig, check_opset
from bertsent.errors import ExportError, SettingsError, first_line
from bertsent.folder import (
    COMPRESSION_FILE,
    INPUT_NAMES,
    METRICS_FILE,
    ONNX_FILE,
    OPENVINO_BIN,
    OPENVINO_XML,
    OUTPUT_NAME,
    clear_weights,
    copy_model_files,
    source_and_output,
    weights_bytes,
)
from bertsent.modeling.parity import PARITY_SHAPES, Candidate, parity_check, random_batch
from bertsent.runtime import THREADS_ENV, require_onnxruntime, require_openvino

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

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


def _onnx_logits(onnx_path: Path, id2label: dict) -> Candidate:
    """The graph being written, run by :class:`~bertsent.inference.OnnxBackend` (as ``Predictor`` will run the
    folder) as the parity check's candidate."""
    from bertsent.inference import OnnxBackend, as_candidate

    return as_candidate(OnnxBackend.from_file(onnx_path, id2label))


def op_counts(onnx_path: Path) -> dict[str, int]:
    """Node count per op type of an ONNX graph (``domain::op`` for non-standard domains)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    counts = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def export_onnx(model_dir: str | os.PathLike, output_dir: str | os.PathLike, **options) -> Path:
    """Export ``model_dir`` to ``output_dir/model.onnx`` plus a loadable folder; returns ``output_dir``."""
    return export_onnx_stage(model_dir, output_dir, **options).output_dir


def export_onnx_stage(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    exporter: str = "torchscript",
    parity_shapes: tuple[tuple[int, int], ...] = PARITY_SHAPES,
    write_card: bool = True,
) -> StageResult:
    """The ONNX export as a stage: nothing is written unless ONNX Runtime matches PyTorch within ``atol`` on
    ``parity_shapes``; the folder, its record and metrics."""
    _check_request(exporter, opset, atol)
    source, output_dir = source_and_output(model_dir, output_dir, ExportError)

    from bertsent.modeling.cls_only import cls_only_last_layer

    started = time.perf_counter()
    model, pad_id = _reference(source)
    # The graph computes the last layer for [CLS] only (all the head reads); parity is checked against
    # the untouched model, so the export is held to the plain forward's logits.
    exported = copy.deepcopy(model)
    cls_only = cls_only_last_layer(exported)
    with tempfile.TemporaryDirectory(prefix="bertsent-export-") as tmp:
        staged = Path(tmp) / "onnx"
        staged.mkdir()
        _export_to(staged / ONNX_FILE, exported, _example(model.config.vocab_size, pad_id), opset, exporter, source)
        export_seconds = time.perf_counter() - started
        candidate = _onnx_logits(staged / ONNX_FILE, model.config.id2label)
        parity = parity_check("ONNX Runtime", candidate, model, atol, pad_id, parity_shapes)
        _publish(staged, output_dir)
    copy_model_files(source, output_dir)
    record = _export_record(
        source, output_dir, exporter=exporter, opset=opset, cls_only=cls_only, parity=parity, seconds=export_seconds
    )
    result = finish(output_dir, record, _flat_metrics, write_export_card if write_card else None)
    log.info(
        "exported %s to %s (%s, opset %d): parity max |diff| %.2g, %.1f MB",
        source, output_dir / ONNX_FILE, exporter, opset, parity["max_abs_diff"], record["onnx_bytes"] / 1e6,
    )  # fmt: skip
    return result


def _reference(source: Path):
    """The PyTorch model every export is held to (eager attention, fp32, eval) and the pad id."""
    from bertsent.modeling.loading import load_tokenizer

    return _load_eager(source), load_tokenizer(source).pad_token_id or 0


def _publish(staged: Path, output_dir: Path) -> None:
    """Move a checked export's files into ``output_dir``, replacing any earlier weights."""
    output_dir.mkdir(parents=True, exist_ok=True)
    clear_weights(output_dir)
    for path in staged.iterdir():
        shutil.move(str(path), output_dir / path.name)


def _check_request(exporter: str, opset: int, atol: float) -> None:
    """The export settings, and the packages the export and its parity check need, before any loading."""
    if exporter not in EXPORTERS:
        raise SettingsError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    check_opset(opset)
    if not atol > 0:
        raise SettingsError(f"atol must be > 0, got {atol!r}")
    require_onnxruntime()
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ExportError("onnx is not installed: pip install onnx") from e


def _export_to(path: Path, model, example: dict[str, torch.Tensor], opset: int, exporter: str, source: Path) -> None:
    try:
        _torch_export(model, example, path, opset, exporter)
    except ExportError:
        raise
    except Exception as e:  # exporter failures come as many types; the first line says what broke
        raise ExportError(f"torch.onnx.export ({exporter}) failed for {source}: {first_line(e)}") from e


def _export_record(
    source: Path, output_dir: Path, *, exporter: str, opset: int, cls_only: bool, parity: dict, seconds: float
) -> dict:
    """``compression.json`` of an export folder: how it was exported, the parity check, sizes and graph."""
    counts = op_counts(output_dir / ONNX_FILE)
    return {
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
        "export_seconds": round(seconds, 2),
        "versions": onnx_versions(),
    }


def _flat_metrics(record: dict) -> dict:
    """The headline ``metrics.json`` of an ONNX or OpenVINO export folder."""
    size = "onnx_bytes" if "onnx_bytes" in record else "openvino_bytes"
    return {
        "parity_max_abs_diff": record["parity"]["max_abs_diff"],
        size: record[size],
        "source_weights_bytes": record["source_weights_bytes"],
        "nodes": record["nodes"],
    }


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


def _parity_rows(parity: dict, how: str) -> str:
    """The head of an export card's table: the parity check's largest difference and the one per shape."""
    shapes = ", ".join(f"{s['shape'][0]}x{s['shape'][1]}: {s['max_abs_diff']:.2g}" for s in parity["shapes"])
    return f"""| | |
|---|---|
| Max abs logit difference vs PyTorch{how} | {parity["max_abs_diff"]:.3g} (tolerance {parity["atol"]:g}) |
| Per shape (batch x tokens) | {shapes} |"""


CLS_ONLY_NOTE = "The last layer is computed for the [CLS] position only (all the classifier reads)."


def write_export_card(output_dir: Path, record: dict) -> Path:
    """README.md of an export folder: what was done and what was measured."""
    from bertsent.folder import card_base_model, write_card

    measured = f"""{_parity_rows(record["parity"], "")}
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


# --- OpenVINO -----------------------------------------------------------------------------------------


def require_openvino_export():
    """openvino, or an :class:`ExportError` with the install hint (checked before any loading)."""
    from bertsent.errors import ModelError

    try:
        return require_openvino()
    except ModelError as e:
        raise ExportError(str(e)) from e


def openvino_ops(xml: Path) -> dict[str, int]:
    """Op count per type of an OpenVINO IR (FakeQuantize nodes are what NNCF's INT8 adds)."""
    ov = require_openvino()
    counts = Counter(op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops())
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def save_openvino(model, folder: Path) -> Path:
    """``openvino.save_model`` as ``folder/openvino_model.xml`` + ``.bin``, weights kept in fp32 (the
    default would halve them to fp16, which the parity check does not promise)."""
    ov = require_openvino()
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / OPENVINO_XML), compress_to_fp16=False)
    return folder / OPENVINO_XML


def _openvino_logits(folder: Path) -> Candidate:
    """OpenVINO on the CPU, f32 inference hint, as the parity check's candidate."""
    from bertsent.inference import OpenVinoBackend, as_candidate

    return as_candidate(OpenVinoBackend(folder, precision="fp32"))


def export_openvino(model_dir: str | os.PathLike, output_dir: str | os.PathLike, **options) -> Path:
    """:func:`export_openvino_stage`'s folder (the path API, as :func:`export_onnx`)."""
    return export_openvino_stage(model_dir, output_dir, **options).output_dir


def export_openvino_stage(
    model_dir: str | os.PathLike, output_dir: str | os.PathLike, *, write_card: bool = True, **options
) -> StageResult:
    """An OpenVINO IR folder (``openvino_model.xml``/``.bin`` plus config and tokenizer files), converted from
    the parity-checked ONNX export (:func:`export_onnx_stage`, which takes ``options``: opset, atol, exporter,
    parity_shapes), then held to the same check with OpenVINO's f32 inference: nothing is written unless it
    matches PyTorch within ``atol`` on ``parity_shapes``."""
    ov = require_openvino_export()
    atol, parity_shapes = options.get("atol", DEFAULT_ATOL), options.get("parity_shapes", PARITY_SHAPES)
    _check_request(options.get("exporter", "torchscript"), options.get("opset", DEFAULT_OPSET), atol)
    source, output_dir = source_and_output(model_dir, output_dir, ExportError)
    started = time.perf_counter()
    model, pad_id = _reference(source)
    with tempfile.TemporaryDirectory(prefix="bertsent-openvino-") as tmp:
        onnx = export_onnx_stage(source, Path(tmp) / "onnx", write_card=False, **options)
        staged = Path(tmp) / "openvino"
        try:
            converted = ov.convert_model(str(onnx.output_dir / ONNX_FILE))
        except Exception as e:  # the converter raises its own OpConversionFailure and RuntimeErrors
            raise ExportError(f"openvino.convert_model failed for {source}: {first_line(e)}") from e
        save_openvino(converted, staged)
        copy_model_files(source, staged)
        export_seconds = time.perf_counter() - started
        parity = parity_check("OpenVINO", _openvino_logits(staged), model, atol, pad_id, parity_shapes)
        _publish(staged, output_dir)
    record = _openvino_record(source, output_dir, onnx.record, parity, export_seconds, ov.__version__)
    result = finish(output_dir, record, _flat_metrics, write_openvino_card if write_card else None)
    log.info(
        "exported %s to %s (OpenVINO IR): parity max |diff| %.2g, %.1f MB",
        source, output_dir / OPENVINO_XML, parity["max_abs_diff"], record["openvino_bytes"] / 1e6,
    )  # fmt: skip
    return result


def _openvino_record(source: Path, output_dir: Path, onnx_record: dict, parity: dict, seconds: float, version):
    """``compression.json`` of an OpenVINO export folder: the ONNX export it came from, parity, sizes, graph."""
    counts = openvino_ops(output_dir / OPENVINO_XML)
    return {
        "method": "openvino-export",
        "source": str(source),
        "via": {k: onnx_record[k] for k in ("method", "exporter", "opset", "last_layer", "parity")},
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "weights": "fp32 (compress_to_fp16=False)",
        "parity": parity,
        "parity_inference_precision": "f32",
        "source_weights_bytes": weights_bytes(source),
        "openvino_bytes": (output_dir / OPENVINO_BIN).stat().st_size,
        "nodes": sum(counts.values()),
        "op_counts": counts,
        "export_seconds": round(seconds, 2),
        "versions": onnx_versions() | {"openvino": version},
    }


def write_openvino_card(output_dir: Path, record: dict) -> Path:
    """README.md of an OpenVINO export folder."""
    from bertsent.folder import card_base_model, write_card

    measured = f"""{_parity_rows(record["parity"], " (OpenVINO f32 inference)")}
| OpenVINO weights | {_mb(record["openvino_bytes"])} (source weights {_mb(record["source_weights_bytes"])}) |
| Graph ops | {record["nodes"]} |"""
    return write_card(
        output_dir,
        title=f"OpenVINO export of `{record['source']}`",
        summary=f"""Exported to ONNX (`torch.onnx.export`, {record["via"]["exporter"]} exporter, opset \
{record["via"]["opset"]}), converted with `openvino.convert_model` and saved as an fp32 IR
(`{OPENVINO_XML}` + `{OPENVINO_BIN}`); inputs `input_ids`, `attention_mask`, output `logits`.
{CLS_ONLY_NOTE if record["via"].get("last_layer") == "cls-only" else ""}""",
        sections={
            "Measured": measured,
            "Use": f'`bertsent predict --model {output_dir} "A wonderful, moving film."` runs it with OpenVINO\n'
            f"(threads: `${THREADS_ENV}` or `--threads`; precision: OpenVINO's own choice for the CPU, e.g. bf16 "
            "with AMX, unless `--precision fp32`). Details: `compression.json`.",
        },
        base_model=card_base_model(Path(record["source"])),
        library_name="openvino",
        tags=["openvino"],
        versions=record.get("versions"),
    )


def export(config: ExportConfig) -> StageResult:
    """``bertsent export``: ONNX (:func:`export_onnx_stage`), an OpenVINO IR (:func:`export_openvino_stage`,
    needs the ``openvino`` extra), or a TF SavedModel / ``.keras`` file (needs the ``keras`` extra);
    every format is parity-checked against PyTorch before anything is written. An early-exit folder is
    exported at full depth: the graph is the model without its exit heads (and so is its config)."""
    from bertsent.modeling.early_exit import recorded_early_exit

    if recorded_early_exit(config.model):
        log.warning(
            "%s is an early-exit folder: the %s export is the full-depth model (early exit runs in PyTorch only)",
            config.model,
            config.format,
        )
    options = {"opset": config.opset, "atol": config.atol, "exporter": config.exporter}
    if config.format == "onnx":
        return export_onnx_stage(config.model, config.output_dir, **options)
    if config.format == "openvino":
        return export_openvino_stage(config.model, config.output_dir, **options)
    from bertsent.keras.export import export_keras_model

    out = Path(
        export_keras_model(config.model, config.output_dir, fmt=config.format, strings=config.strings, atol=config.atol)
    )
    folder = out if out.is_dir() else out.parent
    record = json.loads((folder / COMPRESSION_FILE).read_text()) if (folder / COMPRESSION_FILE).is_file() else {}
    metrics = json.loads((folder / METRICS_FILE).read_text()) if (folder / METRICS_FILE).is_file() else {}
    return StageResult(output_dir=out, record=record, metrics=metrics)
