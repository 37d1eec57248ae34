"""What INT8 embedding tables cost a teacher: each table's relative INT8 error with one scale per table
(what ONNX Runtime's Gather quantization stores) against one scale per row, then the teacher's ONNX
export quantized four ways (fp32 baseline, every Gather, word table only, no Gather; MatMuls INT8 in the
three INT8 ones) and scored on the first validation reviews: accuracy and agreement with fp32.

    python benchmarks/embedding_int8.py --teacher ~/.cache/bertsent/reproduce/teacher \
        --onnx ~/.cache/bertsent/reproduce/compress/teacher-onnx --data ../shared/data/imdb

``--onnx`` is a folder with the teacher's fp32 ``model.onnx`` (``bertsent export``), whose other files
(tokenizer, config) the quantized copies take along. Scoring 500 reviews takes under a minute a variant
on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

POSITION_AND_TYPE = ["/bert/embeddings/position_embeddings/Gather", "/bert/embeddings/token_type_embeddings/Gather"]


def table_errors(teacher: Path) -> None:
    from safetensors.numpy import load_file

    for key, w in sorted(load_file(teacher / "model.safetensors").items()):
        if "embeddings" not in key or not key.endswith("weight") or "LayerNorm" in key:
            continue
        w = w.astype(np.float32)
        low, high = w.min(), w.max()
        scale = (high - low) / 255  # asymmetric uint8, one scale for the table
        per_table = np.round((w - low) / scale) * scale + low
        row_scale = np.abs(w).max(1, keepdims=True) / 127  # symmetric int8, one scale per row
        per_row = np.round(w / row_scale) * row_scale
        norm = np.linalg.norm(w)
        table_error, row_error = np.linalg.norm(per_table - w) / norm, np.linalg.norm(per_row - w) / norm
        print(
            f"{key} {w.shape}: range {low:.3f}..{high:.3f}, median row max |w| {np.median(np.abs(w).max(1)):.3f}; "
            f"INT8 error {table_error:.4f} per table, {row_error:.4f} per row"
        )


def variants(onnx_dir: Path, data: str, samples: int) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from bertsent.compression.quantize import _preprocess
    from bertsent.config import DataConfig
    from bertsent.data.loading import load_data
    from bertsent.predict import Predictor

    validation = load_data(DataConfig(source=data, validation_samples=2000), ("train", "validation")).validation
    texts, labels = validation["text"].tolist()[:samples], validation["label"].to_numpy()[:samples]
    work = Path(tempfile.mkdtemp(prefix="embedding-int8-"))
    pre = work / "pre.onnx"
    _preprocess(onnx_dir / "model.onnx", pre)  # as bertsent quantize does before quantizing
    reference = None
    for name, ops, exclude in [
        ("fp32 (baseline)", None, []),
        ("every Gather INT8", ["MatMul", "Gemm", "Gather"], []),
        ("word table only", ["MatMul", "Gemm", "Gather"], POSITION_AND_TYPE),
        ("no Gather", ["MatMul", "Gemm"], []),
    ]:
        folder = work / name.split()[0]
        shutil.copytree(onnx_dir, folder)
        if ops is not None:
            quantize_dynamic(
                str(pre),
                str(folder / "model.onnx"),
                op_types_to_quantize=ops,
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                extra_options={"MatMulConstBOnly": True},
            )
        started = time.perf_counter()
        predicted = Predictor(folder, backend="onnx").predict_proba(texts).argmax(1)
        reference = predicted if reference is None else reference
        print(
            f"{name}: accuracy {np.mean(predicted == labels):.4f}, agreement with fp32 "
            f"{np.mean(predicted == reference):.4f}, {(folder / 'model.onnx').stat().st_size / 1e6:.1f} MB, "
            f"{time.perf_counter() - started:.0f} s"
        )
    shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="PyTorch folder (model.safetensors)")
    parser.add_argument("--onnx", type=Path, required=True, help="its fp32 ONNX export's folder")
    parser.add_argument("--data", required=True)
    parser.add_argument("--samples", type=int, default=500, help="validation reviews scored")
    args = parser.parse_args()
    table_errors(args.teacher)
    variants(args.onnx, args.data, args.samples)


if __name__ == "__main__":
    main()
