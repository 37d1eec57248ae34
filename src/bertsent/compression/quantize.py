"""INT8 post-training quantization of a classifier folder, checked against its fp32 source.

Four methods:

- ``onnx-dynamic``: export to ONNX (parity-checked), then ``quantize_dynamic``: INT8 weights of every
  MatMul with a constant weight (per-channel by default), activations quantized on the fly per batch.
  No data needed. ``quantize_embeddings`` also stores the embedding tables (``Gather``) in 8 bits.
- ``onnx-static``: same export, then ``quantize_static`` in QDQ format with activation ranges calibrated
  (MinMax) on training reviews; only the MatMul/Gemm nodes with a weight are quantized.
- ``torch-dynamic``: ``torch.ao.quantization.quantize_dynamic`` of the Linear layers. Its packed INT8
  weights cannot be stored as safetensors, so the folder keeps the fp32 weights and a config flag that
  makes :func:`bertsent.modeling.load_classifier` quantize on load: disk size is unchanged.
- ``openvino-int8``: the OpenVINO export (parity-checked), then NNCF post-training quantization
  (``nncf.quantize``, ``ModelType.TRANSFORMER``) with ranges calibrated on training reviews; an OpenVINO
  IR folder with FakeQuantize nodes and INT8 weights (needs the ``openvino`` extra).

Before anything is written, the quantized model and the fp32 source classify the same validation
reviews: accuracies and agreement go into ``compression.json``, a drop past ``max_drop`` points is
warned about, and a collapse onto one class is an error (:class:`QuantizationCollapseError`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bertsent.compression.export import export_onnx_stage, onnx_versions, op_counts
from bertsent.compression.stage import StageResult, finish, folders, score_folder, stage_reviews
from bertsent.config import QuantizeConfig
from bertsent.errors import QuantizationCollapseError, QuantizeError, first_line
from bertsent.folder import (
    COMPRESSION_FILE,
    ONNX_FILE,
    clear_weights,
    copy_model_files,
    weights_bytes,
)
from bertsent.modeling.quantized import CONFIG_FLAG, PER_CHANNEL_FLAG
from bertsent.runtime import require_onnxruntime

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

COLLAPSE_SHARE = 0.95
"""A model that gives one class to at least this share of reviews (when fp32 does not) has collapsed."""


QuantizeResult = StageResult
"""The name quantize's result had before every stage returned a :class:`StageResult`."""


def quantized_node_counts(counts: dict[str, int]) -> dict[str, int]:
    """The INT8 part of an op count: MatMulInteger, DynamicQuantizeLinear, QLinearMatMul, (De)QuantizeLinear..."""
    return {
        op: n
        for op, n in counts.items()
        if "quantize" in op.lower()
        or "Integer" in op
        or op.split("::")[-1].startswith(("QLinear", "QGemm", "QAttention"))
    }


# --- data -------------------------------------------------------------------------------------------


def resolve_data(config: QuantizeConfig, source: Path):
    """The ``DataConfig`` for the check and calibration, and where it came from; (None, reason) if none."""
    from bertsent.data.recorded import recorded_data

    return recorded_data(
        source, config.data, validation_samples=config.validation_samples, train_samples=config.calibration_samples
    )


CALIBRATED_METHODS = ("onnx-static", "openvino-int8")
"""Methods that calibrate activation ranges on training reviews."""


def load_reviews(config: QuantizeConfig, source: Path):
    """Validation (and, for the calibrated methods, calibration) reviews, or None with the reason to skip the check."""
    calibrated = config.method in CALIBRATED_METHODS
    return stage_reviews(
        source,
        config,
        train_samples=config.calibration_samples,
        train=calibrated,
        validation_samples=config.validation_samples,
    )


# --- methods ----------------------------------------------------------------------------------------


@contextmanager
def _quiet_ort_logging():
    """ONNX Runtime's quantization tools log per tensor through the root logger: keep them to warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _preprocess(fp32: Path, target: Path) -> dict:
    """ORT's quantization pre-processing: symbolic shape inference plus constant folding and clean-up.

    Measured on MiniLM: the TorchScript graph shrinks from 556 to 304 nodes (fewer tensors to calibrate,
    2-D Linear layers fused into Gemm) and every tensor gets a shape; dynamic INT8 accuracy is unchanged
    (99.3% vs 99.0% agreement with fp32 on 300 reviews: one review). ``auto_merge`` is needed because the
    position-id slice gives a ``Min(512, sequence)`` dimension the inference otherwise refuses to merge.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_ort_logging():
            quant_pre_process(str(fp32), str(target), auto_merge=True)
    except Exception as e:  # it is an optimisation: quantize the plain export rather than fail
        reason = first_line(e)
        log.warning("quantization pre-processing failed (%s); quantizing the export as it is", reason)
        shutil.copy2(fp32, target)
        return {"applied": False, "error": reason}
    return {"applied": True, "tool": "onnxruntime.quantization.shape_inference.quant_pre_process(auto_merge=True)"}


def _op_types(config: QuantizeConfig) -> list[str]:
    # Gemm is listed for graphs that have it; the TorchScript export writes Linear layers as MatMul + Add.
    return ["MatMul", "Gemm", *(["Gather"] if config.quantize_embeddings else [])]


def onnx_dynamic_int8(config: QuantizeConfig, model_in: Path, model_out: Path) -> dict:
    """``model_in`` (an ONNX file) with INT8 weights in ``model_out`` by ``quantize_dynamic`` (the ops of
    ``config``; activations quantized per batch at run time); returns what was quantized, for the record."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = _op_types(config)
    with _quiet_ort_logging():
        quantize_dynamic(
            str(model_in),
            str(model_out),
            op_types_to_quantize=op_types,
            per_channel=config.per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    return {"weights": "int8", "activations": "uint8, quantized per batch at run time", "op_types": op_types}


def _calibration_reader(batches: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

        def rewind(self) -> None:
            self._items = iter(batches)

    return Reader()


def _calibration_batches(source: Path, texts: list[str], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Training reviews tokenized as the source was trained (max_length, truncation), padded per batch."""
    from bertsent.encoding import encode, iter_batches
    from bertsent.folder import inference_settings
    from bertsent.modeling.loading import load_tokenizer

    tokenizer = load_tokenizer(source)
    max_length, truncation = inference_settings(source, tokenizer)
    encoded = encode(tokenizer, texts, max_length, truncation)
    pad_id = tokenizer.pad_token_id or 0
    return [batch for _, batch in iter_batches(encoded, batch_size, pad_id)]


def weight_nodes(onnx_path: Path, op_types: list[str]) -> list[str]:
    """Names of the nodes of ``op_types`` that read a constant weight (MatMul/Gemm B, Gather data)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    weight_input = {"MatMul": 1, "Gemm": 1, "Gather": 0}
    return [
        node.name
        for node in graph.node
        if node.op_type in op_types and node.input[weight_input[node.op_type]] in constants
    ]


def _onnx_static(config: QuantizeConfig, model_in: Path, model_out: Path, source: Path, texts: list[str]) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    op_types = _op_types(config)
    # Weight ops only (the QDQ quantizer ignores MatMulConstBOnly, so the nodes are named). Measured on
    # MiniLM/IMDB, 300 validation reviews: 96.7% agreement with fp32 vs 97.7% when the attention
    # MatMuls are quantized too -- 3 reviews, within noise; weight-only keeps the attention
    # probabilities in fp32 and ran faster (22 s vs 29 s, one noisy run each).
    nodes = weight_nodes(model_in, op_types)
    batches = _calibration_batches(source, texts, config.batch_size)
    with _quiet_ort_logging():
        quantize_static(
            str(model_in),
            str(model_out),
            _calibration_reader(batches),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            nodes_to_quantize=nodes,
            per_channel=config.per_channel,
            # S8S8 QDQ: ORT's recommended first choice on x86 (VNNI); no U8S8 saturation to work around.
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            # MinMax: the histogram calibrators (percentile, entropy) keep every activation of every
            # review in memory: over 18 GB for MiniLM on 200 reviews of 256 tokens before we stopped it.
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return {
        "format": "QDQ",
        "weights": "int8",
        "activations": f"int8, MinMax ranges calibrated on {len(texts)} training reviews",
        "op_types": op_types,
        "weight_nodes_quantized": len(nodes),
        "calibration_reviews": len(texts),
        "calibration_batches": len(batches),
    }


def _torch_dynamic(config: QuantizeConfig, source: Path, staged: Path) -> dict:
    import torch

    from bertsent.modeling.loading import load_classifier

    copy_model_files(source, staged, weights=True)
    config_file = staged / "config.json"
    saved = json.loads(config_file.read_text())
    saved[CONFIG_FLAG] = "torch-dynamic"
    saved[PER_CHANNEL_FLAG] = config.per_channel
    config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    model = load_classifier(staged)  # the load-time hook quantizes: check it does
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    n_quantized = sum(isinstance(m, dynamic) for m in model.modules())
    n_float = sum(type(m) is torch.nn.Linear for m in model.modules())
    if n_quantized == 0:
        raise QuantizeError(f"{source}: torch dynamic quantization found no Linear layers to quantize")
    return {
        "weights": "int8 (packed in memory at load time; the folder stores the fp32 safetensors)",
        "activations": "uint8, quantized per batch at run time",
        "engine": torch.backends.quantized.engine,
        "quantized_modules": {"DynamicQuantizedLinear": n_quantized, "Linear (left fp32)": n_float},
        "disk_size_note": "unchanged: torch's packed INT8 weights cannot be saved as safetensors",
    }


def _require_nncf():
    """openvino and nncf, or a :class:`QuantizeError` with the install hint."""
    from bertsent.runtime import OPENVINO_HINT

    try:
        import nncf
        import openvino  # noqa: F401
    except ImportError as e:
        raise QuantizeError(f"openvino-int8 needs openvino and nncf: {OPENVINO_HINT.split(': ', 1)[1]}") from e
    return nncf


def _openvino_int8(config: QuantizeConfig, source: Path, staged: Path, tmp: Path, texts: list[str]) -> dict:
    """The OpenVINO fp32 export of ``source``, quantized by NNCF on ``texts`` into ``staged``: the
    record's ``export``, ``quantization``, node counts and sizes."""
    from bertsent.compression.export import export_openvino_stage, openvino_ops, save_openvino
    from bertsent.folder import OPENVINO_XML
    from bertsent.runtime import require_openvino

    nncf, ov = _require_nncf(), require_openvino()
    fp32 = export_openvino_stage(source, tmp / "fp32-openvino", opset=config.opset, write_card=False)
    fp32_dir, export_record = fp32.output_dir, fp32.record
    # One review per calibration item, unpadded: NNCF's subset_size counts items, and padding would
    # only widen the ranges with positions the attention mask ignores.
    items = _calibration_batches(source, texts, 1)
    model = ov.Core().read_model(str(fp32_dir / OPENVINO_XML))
    nncf.set_log_level(logging.WARNING)
    try:
        quantized = nncf.quantize(
            model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items)
        )
    except Exception as e:  # NNCF raises its own types and RuntimeErrors from OpenVINO
        raise QuantizeError(f"nncf.quantize failed for {source}: {first_line(e)}") from e
    save_openvino(quantized, staged)
    copy_model_files(source, staged)
    counts = openvino_ops(staged / OPENVINO_XML)
    quantized_nodes = {op: n for op, n in counts.items() if op in ("FakeQuantize", "FakeConvert")}
    if not quantized_nodes:
        raise QuantizeError(f"{source}: NNCF quantized no node")
    return {
        "export": {k: export_record[k] for k in ("via", "parity", "openvino_bytes", "nodes")},
        "quantization": {
            "tool": f"nncf.quantize (nncf {nncf.__version__}, model_type TRANSFORMER)",
            "weights": "int8 (per-channel, symmetric: NNCF's defaults)",
            "activations": f"int8, ranges calibrated on {len(texts)} training reviews",
            "calibration_reviews": len(texts),
            "subset_size": len(items),
        },
        "quantized_nodes": quantized_nodes,
        "op_counts": counts,
        "fp32_bytes": weights_bytes(fp32_dir),
        "fp32_safetensors_bytes": weights_bytes(source),
        "int8_bytes": weights_bytes(staged),
    }


# --- the check --------------------------------------------------------------------------------------


def compare(labels: np.ndarray, fp32_probs: np.ndarray, int8_probs: np.ndarray, max_drop: float) -> dict:
    """Accuracy of both models, agreement, and the per-model share of the most predicted class."""
    fp32_pred, int8_pred = fp32_probs.argmax(-1), int8_probs.argmax(-1)
    n = len(labels)

    def top_share(pred: np.ndarray) -> float:
        return float(np.bincount(pred).max() / n) if n else 0.0

    fp32_acc, int8_acc = float(np.mean(fp32_pred == labels)), float(np.mean(int8_pred == labels))
    drop = 100 * (fp32_acc - int8_acc)
    int8_share, fp32_share = top_share(int8_pred), top_share(fp32_pred)
    return {
        "reviews": n,
        "fp32_accuracy": fp32_acc,
        "int8_accuracy": int8_acc,
        "accuracy_drop_points": round(drop, 4),
        "agreement": float(np.mean(fp32_pred == int8_pred)),
        "max_abs_prob_diff": float(np.abs(fp32_probs - int8_probs).max()) if n else 0.0,
        "fp32_top_class_share": fp32_share,
        "int8_top_class_share": int8_share,
        "max_drop": max_drop,
        "drop_exceeded": drop > max_drop,
        "collapsed": int8_share >= COLLAPSE_SHARE > fp32_share,
    }


def check_accuracy(source: Path, staged: Path, validation, config: QuantizeConfig) -> dict:
    """Classify the validation reviews with the fp32 source and the quantized folder (the scaffold's scoring:
    the reference in fp32 whatever this CPU could run, the INT8 folder as it will be run)."""
    texts, labels = validation["text"].tolist(), validation["label"].to_numpy()
    fp32 = score_folder(source, texts, labels, config)
    int8 = score_folder(staged, texts, labels, config, precision="auto")
    return {
        "labels": labels,
        "fp32_probs": fp32.probs,
        "int8_probs": int8.probs,
        "backends": {"fp32": fp32.metrics["backend"], "int8": int8.metrics["backend"]},
        # One pass on a shared machine: a sanity figure, not a benchmark.
        "seconds": {"fp32": fp32.metrics["seconds"], "int8": int8.metrics["seconds"]},
    }


# --- the stage --------------------------------------------------------------------------------------


def quantize(config: QuantizeConfig) -> StageResult:
    """Quantize ``config.model`` to INT8 with ``config.method`` and write a loadable, measured folder."""
    if config.method != "torch-dynamic":
        require_onnxruntime()
    if config.method == "openvino-int8":
        _require_nncf()
    source, output_dir = folders(config, QuantizeError)
    reviews, skip_reason = load_reviews(config, source)
    if config.method in CALIBRATED_METHODS and reviews is None:
        raise QuantizeError(f"{config.method} needs calibration reviews: pass --data ({skip_reason})")

    started = time.perf_counter()
    record: dict = {"method": config.method, "source": str(source), "settings": asdict(config), "warnings": []}
    with tempfile.TemporaryDirectory(prefix="bertsent-quantize-") as tmp:
        staged = Path(tmp) / "model"
        staged.mkdir()
        if config.method == "torch-dynamic":
            record["quantization"] = _torch_dynamic(config, source, staged)
            record["fp32_bytes"] = weights_bytes(source)
            record["int8_bytes"] = weights_bytes(staged)
        elif config.method == "openvino-int8":
            record |= _openvino_int8(config, source, staged, Path(tmp), reviews.train["text"].tolist())
        else:
            fp32 = export_onnx_stage(source, Path(tmp) / "fp32", opset=config.opset, write_card=False)
            fp32_dir, export_record = fp32.output_dir, fp32.record
            record["export"] = {k: export_record[k] for k in ("exporter", "opset", "parity", "onnx_bytes", "nodes")}
            prepared = Path(tmp) / "prepared.onnx"
            record["preprocess"] = _preprocess(fp32_dir / ONNX_FILE, prepared)
            if config.method == "onnx-dynamic":
                record["quantization"] = onnx_dynamic_int8(config, prepared, staged / ONNX_FILE)
            else:
                texts = reviews.train["text"].tolist()
                record["quantization"] = _onnx_static(config, prepared, staged / ONNX_FILE, source, texts)
            copy_model_files(source, staged)
            counts = op_counts(staged / ONNX_FILE)
            record["quantized_nodes"] = quantized_node_counts(counts)
            record["op_counts"] = counts
            record["fp32_bytes"] = export_record["onnx_bytes"]
            record["fp32_safetensors_bytes"] = weights_bytes(source)
            record["int8_bytes"] = weights_bytes(staged)
            if not record["quantized_nodes"]:
                op_types = ", ".join(record["quantization"]["op_types"])
                raise QuantizeError(f"{source}: ONNX Runtime quantized no node (op types {op_types})")
        record["size_ratio"] = round(record["int8_bytes"] / max(record["fp32_bytes"], 1), 4)
        record["quantize_seconds"] = round(time.perf_counter() - started, 2)

        if reviews is None:
            message = f"accuracy check skipped: {skip_reason}"
            log.warning(message)
            record["validation"] = {"skipped": skip_reason}
            record["warnings"].append(message)
        else:
            check = check_accuracy(source, staged, reviews.validation, config)
            summary = compare(check["labels"], check["fp32_probs"], check["int8_probs"], config.max_drop)
            record["validation"] = {
                "data": reviews.report.get("source"),
                "origin": reviews.report.get("origin"),
                **summary,
                "backends": check["backends"],
                "seconds": check["seconds"],
            }
            _judge(record, summary, config)
        record["versions"] = _versions(record["method"])
        result = finish(staged, record, _flat_metrics, lambda folder, r: write_quantize_card(folder, r, output_dir))
        output_dir.mkdir(parents=True, exist_ok=True)
        clear_weights(output_dir)
        # compression.json last: the folder is complete once it is there.
        for path in sorted(staged.iterdir(), key=lambda p: p.name == COMPRESSION_FILE):
            shutil.move(str(path), output_dir / path.name)
    log.info("quantized %s with %s: %s", source, config.method, output_dir)
    return StageResult(output_dir=output_dir, record=result.record, metrics=result.metrics)


def _judge(record: dict, summary: dict, config: QuantizeConfig) -> None:
    """Warn loudly about an accuracy drop; stop on a collapse unless allowed."""
    if summary["collapsed"]:
        message = (
            f"quantized model collapsed: it predicts one class for {100 * summary['int8_top_class_share']:.1f}% "
            f"of {summary['reviews']} validation reviews (fp32: {100 * summary['fp32_top_class_share']:.1f}%), "
            f"accuracy {summary['int8_accuracy']:.4f} vs fp32 {summary['fp32_accuracy']:.4f}"
        )
        if not config.allow_collapse:
            raise QuantizationCollapseError(message + "; try --per-channel or another --method (or --allow-collapse)")
        log.warning("%s (written anyway: --allow-collapse)", message)
        record["warnings"].append(message)
    if summary["drop_exceeded"]:
        message = (
            f"INT8 accuracy {summary['int8_accuracy']:.4f} is {summary['accuracy_drop_points']:.2f} points below "
            f"fp32 {summary['fp32_accuracy']:.4f} (more than --max-drop {config.max_drop:g}) "
            f"on {summary['reviews']} validation reviews"
        )
        log.warning("WARNING: %s", message)
        record["warnings"].append(message)


def _versions(method: str) -> dict[str, str]:
    """The packages the quantized folder was made with."""
    versions = onnx_versions() if method != "torch-dynamic" else _torch_versions()
    if method == "openvino-int8":
        import nncf
        import openvino

        versions |= {"openvino": openvino.__version__, "nncf": nncf.__version__}
    return versions


def _flat_metrics(record: dict) -> dict:
    """``metrics.json`` of a quantized folder: sizes, and the check against fp32 where it ran."""
    validation = record["validation"]
    metrics = {
        "method": record["method"],
        "fp32_bytes": record["fp32_bytes"],
        "int8_bytes": record["int8_bytes"],
        "size_ratio": record["size_ratio"],
    }
    if "skipped" not in validation:
        metrics |= {
            f"validation_{k}": validation[k]
            for k in ("fp32_accuracy", "int8_accuracy", "accuracy_drop_points", "agreement", "reviews")
        }
    return metrics


def _torch_versions() -> dict[str, str]:
    import torch
    import transformers

    import bertsent

    return {"bertsent": bertsent.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def write_quantize_card(folder: Path, record: dict, final_dir: Path | None = None) -> Path:
    """README.md of a quantized folder: what was done and what was measured."""
    from bertsent.folder import card_base_model, write_card

    settings = record["settings"]
    how = {
        "onnx-dynamic": "ONNX Runtime dynamic quantization (INT8 weights, activations quantized per batch)",
        "onnx-static": "ONNX Runtime static quantization (QDQ, INT8 weights and calibrated INT8 activations)",
        "torch-dynamic": "PyTorch dynamic quantization of the Linear layers, applied when the folder is loaded",
        "openvino-int8": "NNCF post-training quantization of the OpenVINO export (INT8 weights and activations, "
        "ranges calibrated on training reviews), run with OpenVINO",
    }[record["method"]]
    granularity = "per-channel" if settings["per_channel"] or record["method"] == "openvino-int8" else "per-tensor"
    validation = record["validation"]
    if "skipped" in validation:
        measured = f"Accuracy was **not checked**: {validation['skipped']}."
    else:
        measured = f"""| | fp32 | INT8 |
|---|---|---|
| Validation accuracy ({validation["reviews"]} reviews of `{validation["data"]}`) | \
{validation["fp32_accuracy"]:.4f} | {validation["int8_accuracy"]:.4f} |

Agreement with fp32: {100 * validation["agreement"]:.2f}% of predictions; accuracy change
{0.0 - validation["accuracy_drop_points"]:+.2f} points (a drop past {settings["max_drop"]:g} is warned about)."""
    size = f"{_mb(record['fp32_bytes'])} fp32 -> {_mb(record['int8_bytes'])} INT8"
    if record["method"] == "torch-dynamic":
        size += " (unchanged on disk: the folder stores fp32 weights, quantized to INT8 in memory when loaded)"
    nodes = record.get("quantized_nodes") or record["quantization"].get("quantized_modules", {})
    warning_lines = "".join(f"> **WARNING:** {w}\n\n" for w in record["warnings"])
    target = final_dir or folder
    return write_card(
        folder,
        title=f"INT8 `{record['method']}` quantization of `{record['source']}`",
        summary=f"{how}; {granularity} weight scales"
        f"{', embedding tables in uint8' if settings['quantize_embeddings'] else ''}.\n\n{warning_lines}",
        sections={
            "Measured": f"{measured}\n\nWeights: {size}. Quantized nodes: "
            f"{', '.join(f'{k} {v}' for k, v in nodes.items()) or 'none'}.",
            "Use": f'`bertsent predict --model {target} "A wonderful, moving film."` or\n'
            f"`bertsent evaluate --model {target}`. Everything measured is in `compression.json`.",
        },
        results=None if "skipped" in validation else {"validation": {"accuracy": validation["int8_accuracy"]}},
        dataset=validation.get("data"),
        base_model=card_base_model(Path(record["source"])),
        library_name={"torch-dynamic": "transformers", "openvino-int8": "openvino"}.get(record["method"], "onnx"),
        tags=["int8", record["method"]],
        versions=record.get("versions"),
        model_name=Path(target).name,
    )
