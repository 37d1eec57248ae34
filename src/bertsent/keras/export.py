"""Export any BERT classifier folder (PyTorch- or Keras-trained) to a TensorFlow SavedModel or a ``.keras`` file.

Like the ONNX export, nothing counts as exported until the written artifact, loaded back the way a
user would load it, gives the source model's logits within a tolerance on several shapes; otherwise a
typed error names the largest difference.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from bertsent.config import DEFAULT_ATOL
from bertsent.errors import SettingsError
from bertsent.folder import (
    COMPRESSION_FILE,
    card_base_model,
    copy_model_files,
    read_id2label,
    source_and_output,
    write_card,
)
from bertsent.keras.model import KerasTokenizer, keras_from_torch, keras_logits, require_keras
from bertsent.modeling.parity import judge, max_abs_diff, parity_check, reference_logits

log = logging.getLogger(__name__)

FORMATS = ("tf-savedmodel", "keras")
KERAS_FILE = "model.keras"
SAVEDMODEL_DIR = "saved_model"
STRING_SIGNATURE = "serving_strings"


def _serving_module(model, tokenizer: KerasTokenizer | None, max_length: int, truncation: str):
    """A ``tf.Module`` with the token-id signature and, given a tokenizer, the string signature."""
    import tensorflow as tf

    from bertsent.encoding import HEAD_FRACTION

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.tokenizer = tokenizer.wordpiece if tokenizer else None

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                tf.TensorSpec([None, None], tf.int32, name="attention_mask"),
            ]
        )
        def logits(self, input_ids, attention_mask):
            features = {"token_ids": input_ids, "segment_ids": tf.zeros_like(input_ids), "padding_mask": attention_mask}
            return {"logits": self.model(features, training=False)}

        if tokenizer is not None:

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
            def strings(self, text):
                ids = tokenizer(text)
                # Keep the first ``head`` and last ``tail`` tokens of each row: bertsent's truncation.
                budget = max_length - 2
                head = {"head": budget, "tail": 0}.get(truncation, int(budget * HEAD_FRACTION))
                lengths = tf.cast(ids.row_lengths(), tf.int32)
                position = tf.ragged.range(lengths)
                keep = (position < head) | (position >= tf.expand_dims(lengths - (budget - head), 1))
                ids = tf.ragged.boolean_mask(ids, keep)
                n = ids.nrows()
                cls = tf.fill([n, 1], tf.constant(tokenizer.cls_id, tf.int32))
                sep = tf.fill([n, 1], tf.constant(tokenizer.sep_id, tf.int32))
                ids = tf.concat([cls, ids, sep], axis=1)
                mask = tf.ones_like(ids).to_tensor(0)
                return self.logits(ids.to_tensor(tokenizer.pad_id), mask)

    return Serving()


def _savedmodel_logits(serve):
    """A SavedModel's token-id signature as the parity check's candidate."""
    import tensorflow as tf

    def logits(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return serve(input_ids=tf.constant(ids, tf.int32), attention_mask=tf.constant(mask, tf.int32))["logits"].numpy()

    return logits


def export_keras_model(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    fmt: str = "tf-savedmodel",
    strings: bool = False,
    atol: float = DEFAULT_ATOL,
    threads: int | None = None,
) -> Path:
    """Export ``model_dir`` as a SavedModel (``fmt="tf-savedmodel"``) or a ``.keras`` file; returns ``output_dir``.

    ``strings`` adds a ``serving_strings`` signature that tokenizes raw text inside the graph
    (loading it needs ``import tensorflow_text``). Nothing is kept unless the reloaded artifact matches.
    """
    if fmt not in FORMATS:
        raise SettingsError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if strings and fmt != "tf-savedmodel":
        raise SettingsError("--strings adds a SavedModel signature; it needs --format tf-savedmodel")
    keras = require_keras(threads)
    import tensorflow as tf

    from bertsent.folder import inference_settings
    from bertsent.modeling.loading import load_classifier, load_tokenizer

    source, output_dir = source_and_output(model_dir, output_dir, SettingsError)
    hf_model = load_classifier(source).float().eval()
    hf_tokenizer = load_tokenizer(source)
    pad_id = hf_tokenizer.pad_token_id or 0
    model = keras_from_torch(hf_model)
    max_length, truncation = inference_settings(source, hf_tokenizer)
    record: dict = {"method": fmt, "source": str(source), "max_length": max_length, "truncation": truncation}

    artifact = KERAS_FILE if fmt == "keras" else SAVEDMODEL_DIR
    with tempfile.TemporaryDirectory(prefix="bertsent-export-") as tmp:
        staged = Path(tmp)
        if fmt == "keras":
            model.save(staged / KERAS_FILE)
            with warnings.catch_warnings():  # "compile() was not called": an inference model needs none
                warnings.simplefilter("ignore", UserWarning)
                reloaded = keras.saving.load_model(staged / KERAS_FILE)
            record["parity"] = parity_check(
                "the reloaded .keras model's", keras_logits(reloaded), hf_model, atol, pad_id
            )
        else:
            tokenizer = KerasTokenizer(hf_tokenizer) if strings else None
            module = _serving_module(model, tokenizer, max_length, truncation)
            signatures = {"serving_default": module.logits}
            if strings:
                signatures[STRING_SIGNATURE] = module.strings
            tf.saved_model.save(module, str(staged / SAVEDMODEL_DIR), signatures=signatures)
            loaded = tf.saved_model.load(str(staged / SAVEDMODEL_DIR))
            serve = _savedmodel_logits(loaded.signatures["serving_default"])
            record["parity"] = parity_check("the SavedModel's", serve, hf_model, atol, pad_id)
            record["signatures"] = {"serving_default": "input_ids, attention_mask (int32 [batch, tokens]) -> logits"}
            if strings:
                record["string_parity"] = _check_strings(loaded, hf_model, hf_tokenizer, max_length, truncation, atol)
                record["signatures"][STRING_SIGNATURE] = (
                    "text (string [batch]) -> logits; needs `import tensorflow_text`"
                )
        output_dir.mkdir(parents=True, exist_ok=True)
        target = output_dir / artifact
        if target.is_dir():
            shutil.rmtree(target)
        shutil.move(str(staged / artifact), target)
    copy_model_files(source, output_dir)
    from bertsent.keras.model import keras_versions

    record["versions"] = keras_versions()
    (output_dir / COMPRESSION_FILE).write_text(json.dumps(record, indent=2))
    _write_card(output_dir, record, read_id2label(output_dir))
    log.info(
        "exported %s to %s (%s): parity max |diff| %.2g", source, output_dir, fmt, record["parity"]["max_abs_diff"]
    )
    return output_dir


PARITY_TEXTS = (
    "A wonderful, moving film. Café déjà vu!",
    "<br /><br />This movie... wasn't GOOD!!! 😂 日本語",
    "Dull. " * 300,
)


def _check_strings(loaded, hf_model, hf_tokenizer, max_length: int, truncation: str, atol: float) -> dict:
    """The string signature against bertsent's own tokenization + the PyTorch model (long text included)."""
    import tensorflow as tf

    from bertsent.encoding import collate, encode

    enc = encode(hf_tokenizer, list(PARITY_TEXTS), max_length, truncation)
    batch = collate(enc, np.arange(len(enc)), hf_tokenizer.pad_token_id or 0)
    expected = reference_logits(hf_model, batch["input_ids"], batch["attention_mask"])
    got = loaded.signatures[STRING_SIGNATURE](text=tf.constant(PARITY_TEXTS))["logits"].numpy()
    what, shape = "the SavedModel's string signature", list(batch["input_ids"].shape)
    diff = max_abs_diff(got, expected, what, f"{shape[0]}x{shape[1]} ({len(PARITY_TEXTS)} texts)")
    worst = judge(what, [{"shape": shape, "max_abs_diff": diff}], atol)
    return {"max_abs_diff": worst["max_abs_diff"], "atol": atol, "texts": len(PARITY_TEXTS)}


def _write_card(output_dir: Path, record: dict, id2label: dict[int, str]) -> None:
    labels = ", ".join(f"{i}: {name}" for i, name in sorted(id2label.items()))
    if record["method"] == "keras":
        use = f"""```python
import keras, bertsent.keras.model  # registers the HF-exact BERT backbone class
model = keras.saving.load_model("{output_dir / KERAS_FILE}")
logits = model({{"token_ids": ids, "segment_ids": segments, "padding_mask": mask}})
```"""
    else:
        use = f"""```python
import tensorflow as tf
model = tf.saved_model.load("{output_dir / SAVEDMODEL_DIR}")
logits = model.signatures["serving_default"](input_ids=ids, attention_mask=mask)["logits"]
```"""
        if STRING_SIGNATURE in record.get("signatures", {}):
            use += f"""

Raw text (`{record["truncation"]}` truncation to {record["max_length"]} tokens, inside the graph):
`import tensorflow_text` first (it registers the tokenizer ops), then
`model.signatures["{STRING_SIGNATURE}"](text=tf.constant(["A wonderful film."]))["logits"]`."""
    signatures = "\n".join(f"- `{k}`: {v}" for k, v in record.get("signatures", {}).items())
    shapes = ", ".join(f"{s['shape'][0]}x{s['shape'][1]}" for s in record["parity"]["shapes"])
    write_card(
        output_dir,
        title=f"{record['method']} export of `{record['source']}`",
        summary=f"""Converted from the PyTorch weights to KerasHub's `BertTextClassifier` (exact GELU, as in the \
source),
then written and loaded back. Labels: {labels}.
{signatures}

Max abs logit difference of the reloaded artifact vs PyTorch: {record["parity"]["max_abs_diff"]:.3g}
(tolerance {record["parity"]["atol"]:g}, shapes {shapes}).""",
        sections={"Use": f"{use}\n\nDetails: `{COMPRESSION_FILE}`."},
        base_model=card_base_model(Path(record["source"])),
        library_name="keras" if record["method"] == "keras" else "tensorflow",
        tags=[record["method"]],
        versions=record["versions"],
    )
