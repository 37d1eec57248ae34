"""Fine-tuning with Keras 3 and KerasHub on TensorFlow: ``model.fit`` over a ``tf.data`` pipeline.

Same data, labels, splits, tokenization and starting weights as the PyTorch loop (the weights are
loaded by ``load_classifier`` and converted), Adam(W) with warm-up and linear decay, sparse
categorical cross-entropy on the logits, validation accuracy/F1 after every epoch, the best epoch's
weights kept, early stopping. The result is converted back to the Hugging Face layout (checked on
logits) and written by the same ``finish`` as the PyTorch loop, so every other command reads it.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from bertsent.config import DataConfig, TrainingArguments
from bertsent.encoding import Encoded
from bertsent.keras.model import check_parity, keras_from_torch, keras_versions, require_keras, torch_from_keras
from bertsent.modeling.loading import load_classifier
from bertsent.training.inputs import load_and_encode, seed_everything
from bertsent.training.lr_choice import choose_lr
from bertsent.training.output import finish
from bertsent.training.tracking import BEST, CHECKPOINTS, TrainResult, TrainState, record_validation

log = logging.getLogger(__name__)

ADAM_EPSILON = 1e-8
"""torch's (and HF's) default; Keras defaults to 1e-7."""
BUCKET_WIDTH = 32
"""Reviews are batched with others in the same 32-token length band (less padding)."""


def _rows(encoded: Encoded, order: np.ndarray | None = None):
    """A dataset of each review's token ids (dense, unpadded), sliced from one flat tensor."""
    import tensorflow as tf

    lengths = encoded.lengths
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = tf.constant(np.concatenate(encoded.ids).astype(np.int32))
    order = np.arange(len(encoded)) if order is None else order
    ds = tf.data.Dataset.from_tensor_slices((starts[order], lengths[order]))
    return ds.map(lambda start, n: flat[start : start + n], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _features(ids, pad_id: int):
    """Padded ids (a dense batch) as KerasHub's BERT inputs."""
    import tensorflow as tf

    return {
        "token_ids": ids,
        "segment_ids": tf.zeros_like(ids),
        "padding_mask": tf.cast(tf.not_equal(ids, pad_id), tf.int32),
    }


def train_dataset(encoded: Encoded, labels: np.ndarray, args: TrainingArguments, pad_id: int):
    """Shuffled every epoch (seeded), batched with reviews of similar length, padded per batch."""
    import tensorflow as tf

    # Padding each batch to its bucket's edge keeps the shapes few: tf.function traces once per shape.
    boundaries = [*range(BUCKET_WIDTH + 1, args.max_length + 1, BUCKET_WIDTH), args.max_length + 1]
    ds = tf.data.Dataset.zip(_rows(encoded), tf.data.Dataset.from_tensor_slices(labels.astype(np.int32)))
    ds = ds.shuffle(len(encoded), seed=args.seed, reshuffle_each_iteration=True)
    ds = ds.bucket_by_sequence_length(
        lambda ids, _: tf.shape(ids)[0],
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[args.batch_size] * (len(boundaries) + 1),
        padding_values=(pad_id, 0),
        pad_to_bucket_boundary=True,
    )
    ds = ds.map(lambda ids, y: (_features(ids, pad_id), y), num_parallel_calls=tf.data.AUTOTUNE)
    # Each bucket flushes its last partial batch, so the batch count is exact; telling tf.data lets
    # Keras size its progress bar and schedule instead of discovering the epoch's end.
    per_bucket = np.bincount(np.searchsorted(boundaries, encoded.lengths, side="right"))
    steps = int(sum(math.ceil(n / args.batch_size) for n in per_bucket))
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(tf.data.AUTOTUNE), steps


def predict_logits(model, encoded: Encoded, batch_size: int, pad_id: int) -> np.ndarray:
    """Logits in input order; batches are formed over length-sorted reviews so padding is minimal."""

    order = np.argsort(encoded.lengths, kind="stable")
    ds = _rows(encoded, order)
    ds = ds.padded_batch(batch_size, padding_values=pad_id).map(lambda ids: _features(ids, pad_id))
    logits = np.empty((len(encoded), model.output_dense.units), dtype=np.float32)
    logits[order] = model.predict(ds, verbose=0)
    return logits


def _lr_schedule(keras, peak: float, warmup: int, total: int):
    class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up to ``peak``, then linear decay to 0 (the PyTorch loop's schedule)."""

        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            up = step / max(warmup, 1)
            down = (total - step) / max(total - warmup, 1)
            return peak * keras.ops.maximum(0.0, keras.ops.where(step < warmup, up, down))

    return WarmupLinearDecay()


def build_optimizer(keras, args: TrainingArguments, total_steps: int):
    """Adam(W) with gradient clipping; no weight decay on biases and LayerNorm (the BERT recipe)."""
    schedule = _lr_schedule(keras, args.lr, int(args.warmup_ratio * total_steps), total_steps)
    if args.optimizer == "adam":  # plain Adam, as the original Keras system used
        return keras.optimizers.Adam(learning_rate=schedule, epsilon=ADAM_EPSILON, global_clipnorm=args.max_grad_norm)
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=args.weight_decay,
        epsilon=ADAM_EPSILON,
        global_clipnorm=args.max_grad_norm,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def _choose_lr(args: TrainingArguments, hf_model, total_steps: int, train_enc, train_labels, pad_id: int):
    """The rule or the range test, as the PyTorch loop chooses (the test runs on the PyTorch model the
    Keras one is converted from: same starting weights)."""
    import torch

    def cross_entropy(model, batch, labels, idx):
        return torch.nn.functional.cross_entropy(model(**batch).logits.float(), labels)

    def optimizer(model):
        return torch.optim.AdamW(model.parameters(), lr=1e-7, weight_decay=args.weight_decay)

    training = (optimizer, cross_entropy)
    cpu = torch.device("cpu")
    return choose_lr(
        args, hf_model, total_steps, (train_enc, train_labels), training, cpu, pad_id, Path(args.output_dir)
    )


def _validation_callback(
    keras, args: TrainingArguments, state: TrainState, best_weights: list, splits, val_enc, pad_id, steps_per_epoch
):
    """A Keras callback: per-epoch validation with bertsent's metrics (:func:`record_validation`), the best
    weights kept in ``best_weights``, early stopping, and log lines when there is no progress bar."""
    import tensorflow as tf

    from bertsent.metrics import classification_metrics

    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    val_labels = splits.validation["label"].to_numpy()
    n_train = len(splits.train)

    class Validation(keras.callbacks.Callback):
        """Per-epoch validation with bertsent's metrics, best weights in memory, early stopping, logging."""

        def on_train_batch_begin(self, batch, logs=None):
            self.tick = getattr(self, "tick", None) or time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            state.step += 1
            state.step_in_epoch += 1
            if state.step % args.logging_steps == 0:
                lr = float(self.model.optimizer.learning_rate)
                entry = {"step": state.step, "epoch": round(state.step / steps_per_epoch, 4), "loss": logs["loss"]}
                state.history.append(entry | {"lr": lr})
                if not show_progress:
                    elapsed = state.train_seconds + time.perf_counter() - self.tick
                    log.info(
                        "step %d: loss %.4f, %.1f reviews/s",
                        state.step,
                        logs["loss"],
                        state.step * args.batch_size / elapsed,
                    )

        def on_epoch_end(self, epoch, logs=None):
            state.train_seconds += time.perf_counter() - self.tick
            state.reviews_seen += n_train
            state.epoch, state.step_in_epoch = epoch + 1, 0
            logits = predict_logits(self.model, val_enc, args.eval_batch_size, pad_id)
            probs = np.asarray(tf.nn.softmax(logits, axis=-1), dtype=np.float64)
            metrics = classification_metrics(val_labels, probs, splits.id2label)
            metrics["loss"] = metrics["log_loss"]
            if record_validation(state, metrics, args, float(state.epoch)):
                best_weights[:] = self.model.get_weights()
            if state.stopped_early:
                self.model.stop_training = True
            self.tick = None

    return Validation()


def train_keras(args: TrainingArguments, data: DataConfig):
    """Fine-tune ``args.model`` with Keras on ``data`` and write the usual output folder."""
    keras = require_keras(args.threads)
    import tensorflow as tf
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # torch only converts and tests here, but keep it in bounds
    if args.device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    keras.utils.set_random_seed(args.seed)
    seed_everything(args.seed)
    output_dir = Path(args.output_dir)

    splits, tokenizer, train_enc, val_enc = load_and_encode(args, data)
    pad_id = tokenizer.pad_token_id or 0
    train_labels = splits.train["label"].to_numpy()

    # Starting weights: whatever the PyTorch loop would start from, converted (and checked).
    overrides = {} if args.attention_dropout is None else {"attention_probs_dropout_prob": args.attention_dropout}
    hf_model = load_classifier(args.model, splits.id2label, args.pooling, **overrides)
    model = keras_from_torch(hf_model, attention_dropout=args.attention_dropout)
    check_parity(model, hf_model, pad_id=pad_id)
    dataset, steps_per_epoch = train_dataset(train_enc, train_labels, args, pad_id)
    total_steps = steps_per_epoch * args.epochs
    args, lr_choice = _choose_lr(args, hf_model, total_steps, train_enc, train_labels, pad_id)
    model.compile(
        optimizer=build_optimizer(keras, args, total_steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )

    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    state = TrainState(lr_choice=lr_choice)
    best_weights: list[np.ndarray] = []

    callback = _validation_callback(keras, args, state, best_weights, splits, val_enc, pad_id, steps_per_epoch)
    model.fit(dataset, epochs=args.epochs, callbacks=[callback], shuffle=False, verbose=1 if show_progress else 0)

    # Back to the Hugging Face layout, checked, then written like any bertsent run.
    model.set_weights(best_weights)
    torch_from_keras(model, hf_model)
    parity = check_parity(model, hf_model, pad_id=pad_id)
    hf_model.save_pretrained(output_dir / CHECKPOINTS / BEST)
    extra = {"keras_parity_max_abs_diff": parity["max_abs_diff"], "keras_versions": keras_versions()}
    cpu = torch.device("cpu")
    result: TrainResult = finish(args, data, splits, output_dir, hf_model, tokenizer, state, cpu, None, pad_id, extra)
    return result
