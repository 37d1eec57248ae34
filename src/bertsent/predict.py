"""Prediction with a fine-tuned model folder: texts in, ``{"label", "score"}`` out, like the pipeline."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from bertsent.encoding import TRUNCATION_STRATEGIES, Encoded, encode, iter_batches
from bertsent.errors import DataError, ModelError
from bertsent.modeling import load_classifier, load_tokenizer

log = logging.getLogger("bertsent.predict")

ONNX_FILE = "model.onnx"


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    encoded: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    progress: bool | None = False,
) -> np.ndarray:
    """Class probabilities for every encoded text, in input order (batches sorted by length)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    out = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    with tqdm(total=len(encoded), desc="predicting", unit="review", disable=not progress) as bar:
        for idx, batch in iter_batches(encoded, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(**batch).logits
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            bar.update(len(idx))
    model.train(was_training)
    return out


def inference_settings(model_dir: Path, tokenizer) -> tuple[int, str]:
    """Max length and truncation the model was trained with (from ``training_args.json``)."""
    args_file = model_dir / "training_args.json"
    if args_file.is_file():
        training = json.loads(args_file.read_text()).get("training", {})
        return int(training.get("max_length", 256)), training.get("truncation", "head")
    return min(int(tokenizer.model_max_length), 512), "head"


class TorchBackend:
    """Runs a PyTorch model folder (fp32; autocast on a GPU when asked)."""

    name = "pytorch"

    def __init__(self, model_dir: Path, device: str = "auto") -> None:
        from bertsent.train import pick_device

        self.model = load_classifier(model_dir)
        self.device = pick_device(device)
        self.model.to(self.device).eval()
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}

    @torch.inference_mode()
    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.model(**batch).logits.float().cpu().numpy()


def load_backend(model_dir: Path, device: str = "auto"):
    """The backend a folder calls for: ONNX Runtime when it holds ``model.onnx``, else PyTorch."""
    if (model_dir / ONNX_FILE).is_file():
        from bertsent.export import OnnxBackend

        return OnnxBackend(model_dir)
    return TorchBackend(model_dir, device)


class Predictor:
    """A model folder ready to classify texts; the one object ``predict`` and ``evaluate`` share.

    The backend (PyTorch or ONNX Runtime) is picked from what the folder holds.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        truncation: str | None = None,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ModelError(f"{self.model_dir}: not a model folder (no config.json)")
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.backend = load_backend(self.model_dir, device)
        trained_length, trained_truncation = inference_settings(self.model_dir, self.tokenizer)
        self.max_length = max_length or trained_length
        self.truncation = truncation or trained_truncation
        if self.truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}")
        self.batch_size = batch_size
        self.id2label = self.backend.id2label

    def encode(self, texts: list[str]) -> Encoded:
        return encode(self.tokenizer, texts, self.max_length, self.truncation)

    def predict_proba(self, texts: list[str] | Encoded, progress: bool | None = False) -> np.ndarray:
        """Probabilities, shape ``(len(texts), num_labels)``, in input order (batches sorted by length)."""
        from tqdm.auto import tqdm

        encoded = texts if isinstance(texts, Encoded) else self.encode(list(texts))
        pad_id = self.tokenizer.pad_token_id or 0
        out = np.zeros((len(encoded), len(self.id2label)), dtype=np.float32)
        with tqdm(total=len(encoded), desc="predicting", unit="review", disable=not progress) as bar:
            for idx, batch in iter_batches(encoded, self.batch_size, pad_id):
                out[idx] = softmax(self.backend.logits(batch))
                bar.update(len(idx))
        return out

    def __call__(self, texts: str | list[str], top_k: int | None = 1) -> list[dict] | list[list[dict]]:
        """Pipeline-shaped output: ``[{"label": ..., "score": ...}]``; ``top_k=None`` gives all scores."""
        single = isinstance(texts, str)
        probs = self.predict_proba([texts] if single else texts)
        results = []
        for row in probs:
            order = np.argsort(-row)[: top_k or len(row)]
            scored = [{"label": self.id2label[int(i)], "score": float(row[i])} for i in order]
            results.append(scored[0] if top_k == 1 else scored)
        return results


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def read_texts(path: Path, text_column: str = "text", encoding: str = "utf-8") -> list[str]:
    """Texts from a CSV/JSONL/TXT (one text a line) file, for ``bertsent predict --input``."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            texts = path.read_text(encoding=encoding).splitlines()
            return [t for t in texts if t.strip()]
        if suffix == ".csv":
            with path.open(encoding=encoding, newline="") as f:
                reader = csv.DictReader(f)
                if text_column not in (reader.fieldnames or []):
                    raise DataError(
                        f"{path}: no column '{text_column}' (found: {', '.join(reader.fieldnames or [])});"
                        " pass --text-column"
                    )
                return [row[text_column] or "" for row in reader]
        if suffix in (".jsonl", ".json"):
            texts = []
            with path.open(encoding=encoding) as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path} line {line_no}: invalid JSON ({e.msg})") from e
                    if isinstance(row, str):
                        texts.append(row)
                    elif isinstance(row, dict) and text_column in row:
                        texts.append(str(row[text_column]))
                    else:
                        raise DataError(f"{path} line {line_no}: no field '{text_column}'; pass --text-column")
            return texts
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid {encoding} ({e.reason} at byte {e.start}); pass --encoding") from e
    raise DataError(f"{path}: unknown input format '{suffix}' (use .csv, .jsonl or .txt)")


def write_predictions(path: Path, texts: list[str], predictions: list[dict]) -> None:
    """Write predictions in input order as CSV or JSONL (chosen by the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label", "score"])
            writer.writerows([t, p["label"], p["score"]] for t, p in zip(texts, predictions, strict=True))
    elif path.suffix.lower() in (".jsonl", ".json"):
        with path.open("w", encoding="utf-8") as f:
            for text, pred in zip(texts, predictions, strict=True):
                f.write(json.dumps({"text": text} | pred, ensure_ascii=False) + "\n")
    else:
        raise DataError(f"{path}: unknown output format '{path.suffix}' (use .csv or .jsonl)")


def predict_file(predictor: Predictor, input_path: Path, output_path: Path, text_column: str = "text") -> int:
    """Classify every text of ``input_path`` into ``output_path``; returns the number of rows."""
    if output_path.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise DataError(f"{output_path}: unknown output format '{output_path.suffix}' (use .csv or .jsonl)")
    texts = read_texts(input_path, text_column)
    probs = predictor.predict_proba(texts, progress=None)
    predictions = [{"label": predictor.id2label[int(row.argmax())], "score": float(row.max())} for row in probs]
    write_predictions(output_path, texts, predictions)
    return len(texts)
