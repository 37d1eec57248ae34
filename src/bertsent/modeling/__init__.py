"""Models in memory: loading from the embedded default, folders and hub names (``loading``), the layouts
of pruned folders (``pruned``), low-rank factorized Linears (``factorized``), load-time INT8
(``quantized``), the [CLS]-only last layer (``cls_only``), exit heads with the early-exit forward
(``early_exit``), the parity check (``parity``) and the one context for passes over a model in memory:
mode and grad mode set, the mode restored (``passes``). Nothing here knows about stages: they build on it."""

from bertsent.modeling.loading import load_classifier, load_tokenizer, resolve_model

__all__ = ["load_classifier", "load_tokenizer", "resolve_model"]
