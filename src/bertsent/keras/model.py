"""Keras 3 / KerasHub twins of bertsent's BERT classifiers: conversion both ways, the tokenizer, parity.

A PyTorch classifier (any folder ``load_classifier`` reads: the embedded MiniLM, a local Hugging Face
folder, a hub name, a bertsent-trained model) becomes a KerasHub ``BertTextClassifier`` with the same
weights, and back. Two things KerasHub does differently from Hugging Face are fixed rather than
tolerated: its BERT uses the tanh-approximate GELU (HF: exact), and its tokenizer case-folds and keeps
accents (HF: lowercases and strips them). Every conversion is checked on logits (``check_parity``).

TensorFlow, Keras and KerasHub are optional (``pip install "bertsent[keras]"``): they are imported
inside functions, so the rest of bertsent works without them.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from typing import Any

import numpy as np

from bertsent.config import DEFAULT_ATOL
from bertsent.errors import ModelError
from bertsent.modeling.parity import PARITY_SHAPES, parity_check

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "bertsent[keras]"'
EXACT_GELU = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True}
"""HF ``hidden_act`` values KerasHub can express, and whether each is the tanh approximation."""


def require_keras(threads: int | None = None) -> Any:
    """Import Keras on the TensorFlow backend (one-line error without the extra); returns ``keras``.

    The first call sets TensorFlow's thread pools, before TensorFlow starts: ``threads`` intra-op
    threads (default one per physical core) and a single inter-op pool, so TF does not oversubscribe
    a small CPU (or fight torch in this process). Later calls leave them as they are.
    """
    keras, tf = _import_keras()
    if not _THREADS_SET:
        from bertsent.runtime import resolve_threads

        try:
            tf.config.threading.set_intra_op_parallelism_threads(resolve_threads(threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TF already started in this process: its pools are fixed now
            log.debug("TensorFlow thread pools were already initialised")
        _THREADS_SET.append(True)
    return keras


_THREADS_SET: list[bool] = []


@cache
def _import_keras() -> tuple[Any, Any]:
    backend = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":
        raise ModelError(f"the Keras path needs KERAS_BACKEND=tensorflow, not {backend!r}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter (CUDA probes)
    try:
        import keras
        import keras_hub  # noqa: F401
        import tensorflow as tf
    except ImportError as e:
        raise ModelError(f"the Keras backend is not installed ({e.name} is missing): {INSTALL_HINT}") from e
    tf.get_logger().setLevel("ERROR")
    logging.getLogger("absl").setLevel(logging.ERROR)  # SavedModel's notes on renamed captured inputs
    return keras, tf


@cache
def _backbone_class():
    """KerasHub's ``BertBackbone`` with HF's exact GELU and a separate attention dropout.

    Registered with Keras so ``.keras`` files reload with the same activations.
    """
    keras = require_keras()
    from keras_hub.models import BertBackbone
    from keras_hub.src.utils.keras_utils import gelu_approximate

    @keras.saving.register_keras_serializable(package="bertsent")
    class HFBertBackbone(BertBackbone):
        def __init__(self, *, approximate_gelu: bool = False, attention_dropout: float | None = None, **kwargs):
            super().__init__(**kwargs)
            self.approximate_gelu = approximate_gelu
            self.attention_dropout = attention_dropout
            activation = gelu_approximate if approximate_gelu else keras.activations.gelu  # exact by default
            for layer in self.transformer_layers:
                # Layers are built by now; the functional graph calls them again, so this takes effect.
                layer.activation = activation
                layer._feedforward_intermediate_dense.activation = activation
                if attention_dropout is not None:
                    layer._self_attention_layer._dropout_layer.rate = attention_dropout

        def get_config(self):
            return super().get_config() | {
                "approximate_gelu": self.approximate_gelu,
                "attention_dropout": self.attention_dropout,
            }

    return HFBertBackbone


def _check_convertible(config) -> None:
    where = getattr(config, "_name_or_path", "") or "the model"
    if config.model_type != "bert":
        raise ModelError(f"{where}: the Keras path supports BERT models, not {config.model_type!r}")
    if getattr(config, "bertsent_pruning", None):
        raise ModelError(f"{where}: pruned layouts cannot be expressed in KerasHub's BertBackbone")
    if getattr(config, "bertsent_factorization", None):
        raise ModelError(f"{where}: factorized layers cannot be expressed in KerasHub's BertBackbone")
    if config.hidden_act not in EXACT_GELU:
        raise ModelError(f"{where}: activation {config.hidden_act!r} has no KerasHub equivalent")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise ModelError(f"{where}: only absolute position embeddings convert to KerasHub")


def _weight_map(model, n_layers: int) -> list[tuple[Any, str, bool]]:
    """(Keras variable, HF state-dict key, whether the HF matrix is stored transposed) for every weight."""
    backbone = model.backbone
    pairs: list[tuple[Any, str, bool]] = [
        (backbone.get_layer("token_embedding").embeddings, "bert.embeddings.word_embeddings.weight", False),
        (
            backbone.get_layer("position_embedding").position_embeddings,
            "bert.embeddings.position_embeddings.weight",
            False,
        ),
        (backbone.get_layer("segment_embedding").embeddings, "bert.embeddings.token_type_embeddings.weight", False),
        (backbone.get_layer("embeddings_layer_norm").gamma, "bert.embeddings.LayerNorm.weight", False),
        (backbone.get_layer("embeddings_layer_norm").beta, "bert.embeddings.LayerNorm.bias", False),
    ]
    for i in range(n_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        attn, hf = block._self_attention_layer, f"bert.encoder.layer.{i}"
        for dense, name in (
            (attn.query_dense, "attention.self.query"),
            (attn.key_dense, "attention.self.key"),
            (attn.value_dense, "attention.self.value"),
            (attn.output_dense, "attention.output.dense"),
            (block._feedforward_intermediate_dense, "intermediate.dense"),
            (block._feedforward_output_dense, "output.dense"),
        ):
            pairs += [(dense.kernel, f"{hf}.{name}.weight", True), (dense.bias, f"{hf}.{name}.bias", False)]
        for norm, name in (
            (block._self_attention_layer_norm, "attention.output"),
            (block._feedforward_layer_norm, "output"),
        ):
            pairs += [
                (norm.gamma, f"{hf}.{name}.LayerNorm.weight", False),
                (norm.beta, f"{hf}.{name}.LayerNorm.bias", False),
            ]
    pooled, head = backbone.get_layer("pooled_dense"), model.output_dense
    pairs += [
        (pooled.kernel, "bert.pooler.dense.weight", True),
        (pooled.bias, "bert.pooler.dense.bias", False),
        (head.kernel, "classifier.weight", True),
        (head.bias, "classifier.bias", False),
    ]
    return pairs


def _to_keras_array(hf: np.ndarray, shape: tuple[int, ...], transposed: bool) -> np.ndarray:
    # HF Linear weights are (out, in); Keras kernels are (in, out), attention ones split into heads.
    return np.reshape(hf.T if transposed else hf, shape)


def _to_hf_array(value: np.ndarray, shape: tuple[int, ...], transposed: bool) -> np.ndarray:
    return np.reshape(value, shape[::-1]).T if transposed else np.reshape(value, shape)


def keras_from_torch(hf_model, attention_dropout: float | None = None):
    """A KerasHub ``BertTextClassifier`` with ``hf_model``'s weights (a ``BertForSequenceClassification``)."""
    require_keras()
    import keras_hub

    config = hf_model.config
    _check_convertible(config)
    backbone = _backbone_class()(
        vocabulary_size=config.vocab_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size,
        dropout=config.hidden_dropout_prob,
        max_sequence_length=config.max_position_embeddings,
        num_segments=config.type_vocab_size,
        approximate_gelu=EXACT_GELU[config.hidden_act],
        attention_dropout=config.attention_probs_dropout_prob if attention_dropout is None else attention_dropout,
    )
    dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    model = keras_hub.models.BertTextClassifier(
        backbone, num_classes=config.num_labels, preprocessor=None, dropout=dropout
    )
    state = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
    for variable, key, transposed in _weight_map(model, config.num_hidden_layers):
        if key not in state:
            raise ModelError(f"{config._name_or_path or 'the model'}: weight {key} is missing; not a BERT classifier")
        variable.assign(_to_keras_array(state[key], tuple(variable.shape), transposed))
    return model


def torch_from_keras(keras_model, hf_model):
    """Copy ``keras_model``'s weights into ``hf_model`` (same architecture) in place; returns it."""
    import torch

    state = hf_model.state_dict()
    update = {}
    for variable, key, transposed in _weight_map(keras_model, hf_model.config.num_hidden_layers):
        value = _to_hf_array(np.asarray(variable.numpy()), tuple(state[key].shape), transposed)
        update[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    hf_model.load_state_dict(update, strict=False)
    return hf_model


def keras_inputs(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """HF-style arrays as KerasHub's BERT input dict."""
    ids = np.asarray(input_ids, dtype=np.int32)
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.asarray(attention_mask, np.int32)}


def keras_logits(keras_model):
    """A Keras classifier as the parity check's candidate: ``(input_ids, attention_mask) -> logits``."""
    return lambda ids, mask: np.asarray(keras_model(keras_inputs(ids, mask), training=False))


def check_parity(
    keras_model,
    hf_model,
    shapes: tuple[tuple[int, int], ...] = PARITY_SHAPES,
    atol: float = DEFAULT_ATOL,
    pad_id: int = 0,
) -> dict:
    """The parity check (``bertsent.modeling.parity``) of a Keras model against the PyTorch one it came from."""
    return parity_check("Keras", keras_logits(keras_model), hf_model.float().eval(), atol, pad_id, shapes)


# --- Tokenizer: KerasHub's WordPiece behind HF's BertNormalizer steps, as TensorFlow ops ------------


def hf_normalize(texts, lowercase: bool = True, strip_accents: bool | None = None):
    """HF ``BertNormalizer`` in TF ops, so a string-input graph tokenizes exactly like the fast tokenizer.

    KerasHub's own ``lowercase``/``strip_accents`` case-fold (ß→ss, ﬁ→fi, ½→1⁄2) and do not drop
    control/format characters; HF cleans the text, strips accents (when lowercasing, unless told
    otherwise) and lowercases character by character.
    """
    import tensorflow as tf
    import tensorflow_text as tf_text

    x = tf.strings.regex_replace(texts, r"[\t\n\r\p{Zs}]", " ")  # HF's whitespace
    x = tf.strings.regex_replace(x, r"[\p{C}\x{FFFD}]", "")  # control, format, unassigned: dropped
    if strip_accents or (strip_accents is None and lowercase):
        x = tf_text.normalize_utf8(x, "NFD")
        x = tf.strings.regex_replace(x, r"\p{Mn}", "")
    if lowercase:
        x = tf.strings.regex_replace(x, "Σ", "σ")  # ICU lowercases a final capital sigma to ς; HF does not
        x = tf.strings.lower(x, encoding="utf-8")
    return x


class KerasTokenizer:
    """Token ids exactly as the model folder's HF fast tokenizer gives them, computed by TF ops."""

    def __init__(self, hf_tokenizer) -> None:
        require_keras()
        import keras_hub

        normalizer = getattr(hf_tokenizer.backend_tokenizer, "normalizer", None)
        state = _normalizer_state(normalizer)
        vocab = [token for token, _ in sorted(hf_tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
        self.lowercase = state.get("lowercase", True)
        self.strip_accents = state.get("strip_accents")
        self.cls_id, self.sep_id = hf_tokenizer.cls_token_id, hf_tokenizer.sep_token_id
        self.pad_id = hf_tokenizer.pad_token_id or 0
        self.wordpiece = keras_hub.models.BertTokenizer(
            vocabulary=vocab,
            lowercase=False,
            strip_accents=False,
            split_on_cjk=state.get("handle_chinese_chars", True),
        )

    def __call__(self, texts):
        """Token ids per text, no special tokens, no truncation: ragged int32 inside a graph (lists eagerly)."""
        return self.wordpiece(hf_normalize(texts, self.lowercase, self.strip_accents))


def _normalizer_state(normalizer) -> dict:
    import json

    if normalizer is None:
        return {}
    state = json.loads(normalizer.__getstate__())
    if state.get("type") != "BertNormalizer":
        raise ModelError(f"the Keras tokenizer needs a BERT WordPiece tokenizer, not a {state.get('type')} normalizer")
    return state


def keras_versions() -> dict[str, str]:
    import keras
    import keras_hub
    import tensorflow as tf

    return {"keras": keras.__version__, "keras_hub": keras_hub.__version__, "tensorflow": tf.__version__}
