"""The start of every training run, whatever the backend: seeds, the data splits and their encodings.

Validation is carved from train; test is never looked at for model selection.
"""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import torch

from bertsent.config import DataConfig, TrainingArguments
from bertsent.data.loading import Splits, load_data
from bertsent.encoding import Encoded, encode
from bertsent.modeling.loading import load_tokenizer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_and_encode(args: TrainingArguments, data: DataConfig) -> tuple[Splits, object, Encoded, Encoded]:
    """Load the splits and encode train and validation: one path for every training backend."""
    started = time.perf_counter()
    splits = load_data(data)
    tokenizer = load_tokenizer(args.model)
    train_enc = encode(tokenizer, splits.train["text"].tolist(), args.max_length, args.truncation)
    val_enc = encode(tokenizer, splits.validation["text"].tolist(), args.max_length, args.truncation)
    log.info(
        "data: %d train, %d validation, %s test reviews; encoded in %.1fs (%.0f%% of train truncated)",
        len(train_enc),
        len(val_enc),
        "no" if splits.test is None else len(splits.test),
        time.perf_counter() - started,
        100 * np.mean(train_enc.full_lengths > args.max_length),
    )
    return splits, tokenizer, train_enc, val_enc
