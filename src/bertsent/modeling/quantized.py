"""Load-time INT8: PyTorch dynamic quantization, applied when a ``torch-dynamic`` folder is loaded."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CONFIG_FLAG = "bertsent_quantization"


PER_CHANNEL_FLAG = "bertsent_quantization_per_channel"


def is_torch_dynamic(model: torch.nn.Module) -> bool:
    """Whether ``model`` was loaded from a ``torch-dynamic`` folder: its Linears are INT8 kernels that take
    fp32 activations (autocast to bf16 feeds them bf16, which they refuse)."""
    return getattr(getattr(model, "config", None), CONFIG_FLAG, None) == "torch-dynamic"


def quantize_torch_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """INT8 dynamic quantization of every ``nn.Linear`` (in place), per-channel unless the config says not.

    The one place bertsent touches the deprecated ``torch.ao.quantization`` eager API; it is also the
    load-time hook of :func:`bertsent.modeling.load_classifier` for ``torch-dynamic`` folders.
    """
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    per_channel = getattr(getattr(model, "config", None), PER_CHANNEL_FLAG, True)
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        # Deprecation notices about torch.ao moving to torchao: known, and this function is the only user.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return quantize_dynamic(model.eval(), {torch.nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
