"""bertsent: fine-tune, evaluate, compress and serve BERT-family sentiment classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

# Heavy modules (torch, transformers) load on first use, so `bertsent --help` stays fast.
_EXPORTS = {
    "DataConfig": "bertsent.config",
    "Splits": "bertsent.data.loading",
    "load_data": "bertsent.data.loading",
    "TrainingArguments": "bertsent.config",
    "DistillationArguments": "bertsent.config",
    "InferenceSettings": "bertsent.config",
    "ExplainSettings": "bertsent.config",
    "train": "bertsent.training.loop",
    "distill": "bertsent.training.distill",
    "evaluate": "bertsent.evaluate",
    "Predictor": "bertsent.predict",
    "BertsentError": "bertsent.errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bertsent' has no attribute {name!r}")
