"""The reviews a model folder records (``training_args.json``): what quantization's accuracy check and
``precision="auto"``'s check against fp32 classify, so both read them the same way."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bertsent.config import DataConfig
from bertsent.errors import DataError, ModelError
from bertsent.folder import ARGS_FILE, data_config_for, read_training_args


def _recorded_data(source: Path) -> dict | None:
    try:
        return read_training_args(source).get("data") or None
    except ModelError:  # an unreadable record counts as none: the check is skipped, not the run
        return None


def recorded_data(
    source: Path,
    data: DataConfig | None = None,
    *,
    validation_samples: int,
    train_samples: int | None = None,
    eval_samples: int | None = None,
) -> tuple[DataConfig | None, str]:
    """The ``DataConfig`` for a check of ``source`` and where it came from (``data`` when given, else the
    data in its training_args.json), with a stage's counts: ``validation_samples`` validation reviews,
    ``train_samples`` training and ``eval_samples`` test reviews (None: all). Given ``data`` is a slice the
    stage stays within: its own subsets cap the stage's counts. ``(None, reason)`` when there is no data."""
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    if data:
        origin = "--data"
        train_samples, eval_samples = (
            _within(train_samples, data.train_samples),
            _within(eval_samples, data.eval_samples),
        )
    else:
        recorded = _recorded_data(source)
        if not recorded or not recorded.get("source"):
            return None, f"no --data given and {source / ARGS_FILE} records no data"
        data = DataConfig(**{k: v for k, v in recorded.items() if k in fields})
        origin = f"recorded in {source / ARGS_FILE}"
    # Same labels, and the validation split the source was trained with when it is the same data.
    data = data_config_for(source, data)
    return (
        dataclasses.replace(
            data,
            validation_samples=_within(validation_samples, data.validation_samples),
            train_samples=train_samples,
            eval_samples=eval_samples,
        ),
        origin,
    )


def _within(count: int | None, cap: int | None) -> int | None:
    """A stage's count of reviews, at most the data's own subset of that split (None: no limit)."""
    return count if cap is None else cap if count is None else min(count, cap)


def recorded_reviews(
    source: Path,
    model_labels: dict[int, str],
    data: DataConfig | None = None,
    *,
    validation_samples: int,
    train_samples: int | None = None,
    eval_samples: int | None = None,
    splits: tuple[str, ...] = ("validation",),
):
    """The loaded splits (``bertsent.data.loading.Splits``, ``report["origin"]``/``["source"]`` set) for a
    check of ``source``, or ``(None, reason)`` to skip it. Given ``data`` that cannot be read is the user's
    error; recorded data that moved since training is a reason to skip."""
    from bertsent.data.loading import load_data

    config, origin = recorded_data(
        source, data, validation_samples=validation_samples, train_samples=train_samples, eval_samples=eval_samples
    )
    if config is None:
        return None, origin
    try:
        loaded = load_data(config, splits=splits)
    except DataError as e:
        if data:
            raise
        # The recorded data may have moved since training: not the user's input, so skip rather than fail.
        return None, f"data {config.source} ({origin}) cannot be read: {e}"
    if len(loaded.validation) == 0:
        return None, f"data {config.source} ({origin}) has no validation reviews"
    if {int(k): v for k, v in loaded.id2label.items()} != model_labels:
        raise DataError(f"labels of {config.source} ({loaded.id2label}) differ from the model's ({model_labels})")
    loaded.report["origin"] = origin
    loaded.report["source"] = config.source
    return loaded, None
