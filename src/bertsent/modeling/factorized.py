"""Low-rank factorized Linear layers: a (weighted) truncated SVD as two thinner Linears, and loading them back.

A ``Linear(in, out)`` with weight ``W`` (out x in) becomes :class:`FactorizedLinear`: ``down =
Linear(in, r, bias=False)`` then ``up = Linear(r, out)`` with the original bias, from ``W ≈ U_r S_r V_rᵀ``:
``up.weight = U_r S_r^½`` and ``down.weight = S_r^½ V_rᵀ`` (the singular values split evenly, so neither
factor starts at a much larger scale than the other when recovery fine-tunes both). It holds ``r·(in +
out)`` weights instead of ``in·out``.

Weighted SVD: with a scale per input feature ``c`` (e.g. the RMS of the activations reaching the layer)
and/or per output feature ``g`` (e.g. Fisher information), the SVD is taken of ``diag(g) W diag(c)`` and
the factors unscaled afterwards, so the truncation minimises ``‖diag(g)(W − Ŵ)diag(c)‖_F`` (Eckart–Young
on the scaled matrix) instead of ``‖W − Ŵ‖_F``. With ``c`` the inputs' RMS that is the expected output
error ``E‖(W − Ŵ)x‖²`` when input features are uncorrelated.

The ranks are recorded in ``config.json`` under ``bertsent_factorization`` (``{"ranks": {module path:
rank}}``, paths as in the state dict), so :func:`load_factorized_classifier` builds the model from its
config (pruned layout first, when it has one), puts empty factorized modules of those ranks in place and
loads the safetensors weights strictly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from bertsent.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FACTORIZATION_KEY = "bertsent_factorization"
"""Attribute of the model config (and key of config.json) that holds the factorized ranks."""
TARGET_MODULES = {
    "ffn": ("intermediate.dense", "output.dense"),
    "attention": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
}
"""Per target of ``bertsent factorize``, the Linears of each BERT encoder layer it replaces."""


class FactorizedLinear(nn.Module):
    """``Linear(in, out)`` as ``up(down(x))``: ``down = Linear(in, rank, bias=False)``, ``up = Linear(rank, out)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def in_features(self) -> int:
        return self.down.in_features

    @property
    def out_features(self) -> int:
        return self.up.out_features

    @property
    def rank(self) -> int:
        return self.down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def saves_parameters(in_features: int, out_features: int, rank: int) -> bool:
    """Whether rank ``rank`` holds fewer weights than the dense matrix: ``r·(in + out) < in·out``."""
    return rank * (in_features + out_features) < in_features * out_features


# --- the SVD ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spectrum:
    """The SVD ``u @ diag(s) @ vh`` (float64) of a weight scaled by ``row`` and ``col`` (None: unscaled)."""

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor
    row: torch.Tensor | None = None
    col: torch.Tensor | None = None

    def energy(self, rank: int) -> float:
        """Share of the squared singular values the first ``rank`` keep."""
        squared = self.s.square()
        total = float(squared.sum())
        return float(squared[:rank].sum()) / total if total > 0 else 1.0


def _safe_scale(scale: torch.Tensor | None, size: int, what: str) -> torch.Tensor | None:
    """A positive float64 scale of ``size`` entries; tiny entries are raised so that unscaling stays finite."""
    if scale is None:
        return None
    scale = torch.as_tensor(scale).detach().to("cpu", torch.float64).flatten()
    if scale.shape != (size,):
        raise ModelError(f"a {what} scale needs {size} entries, got {tuple(scale.shape)}")
    if not torch.isfinite(scale).all() or scale.max() <= 0:
        return None  # nothing measured (a dead layer): an unweighted SVD is the honest fallback
    # A feature that never fires would be divided by ~0: 1e-6 of the largest is far below anything that matters.
    return scale.clamp_min(float(scale.max()) * 1e-6)


def weighted_svd(
    weight: torch.Tensor, row_scale: torch.Tensor | None = None, col_scale: torch.Tensor | None = None
) -> Spectrum:
    """The SVD of ``diag(row_scale) @ weight @ diag(col_scale)`` in float64 (CPU: a few ms per matrix)."""
    matrix = weight.detach().to("cpu", torch.float64)
    row = _safe_scale(row_scale, matrix.shape[0], "row")
    col = _safe_scale(col_scale, matrix.shape[1], "column")
    if row is not None:
        matrix = matrix * row[:, None]
    if col is not None:
        matrix = matrix * col[None, :]
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return Spectrum(u=u, s=s, vh=vh, row=row, col=col)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of the sum of their squares (1 for a zero matrix)."""
    squared = torch.as_tensor(singular_values, dtype=torch.float64).square()
    total = float(squared.sum())
    if total <= 0:
        return 1
    shares = torch.cumsum(squared, 0) / total
    # A relative tolerance: energy=1 must give the full rank, not one past it through rounding.
    reached = torch.nonzero(shares >= energy - 1e-12)
    return int(reached[0]) + 1 if len(reached) else len(squared)


@torch.no_grad()
def low_rank(linear: nn.Linear, spectrum: Spectrum, rank: int) -> FactorizedLinear:
    """The rank-``rank`` :class:`FactorizedLinear` of ``linear`` from its (weighted) ``spectrum``."""
    if not 1 <= rank <= len(spectrum.s):
        raise ModelError(f"rank must be in 1..{len(spectrum.s)} for a {tuple(linear.weight.shape)} weight, got {rank}")
    root = spectrum.s[:rank].sqrt()
    up = spectrum.u[:, :rank] * root[None, :]
    down = root[:, None] * spectrum.vh[:rank]
    if spectrum.row is not None:
        up = up / spectrum.row[:, None]
    if spectrum.col is not None:
        down = down / spectrum.col[None, :]
    weight = linear.weight
    module = FactorizedLinear(
        linear.in_features, linear.out_features, rank, linear.bias is not None, weight.device, weight.dtype
    )
    module.down.weight.copy_(down.to(weight.device, weight.dtype))
    module.up.weight.copy_(up.to(weight.device, weight.dtype))
    if linear.bias is not None:
        module.up.bias.copy_(linear.bias)
    module.train(linear.training)
    return module


# --- the model ----------------------------------------------------------------------------------------


def target_linears(model: nn.Module, targets: Iterable[str]) -> dict[str, nn.Linear]:
    """The Linears ``targets`` name (see :data:`TARGET_MODULES`) in every encoder layer, by module path.

    A mean-pooling layer (``modeling.pooling``) is the head's, not the encoder's: its projections are set to
    average (the value and output near multiples of the identity, a flat spectrum), so it stays dense."""
    from bertsent.modeling.pooling import pooling_layer

    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ModelError(
            f"factorize supports BERT-style encoders (encoder.layer[i]); {model_type} is laid out otherwise"
        )
    prefix = f"{model.base_model_prefix}.encoder.layer" if base is not model else "encoder.layer"
    found: dict[str, nn.Linear] = {}
    pooling = pooling_layer(model.config) if hasattr(model, "config") else None
    for i, layer in enumerate(layers):
        if i == pooling:
            continue
        for target in targets:
            for path in TARGET_MODULES[target]:
                try:
                    module = layer.get_submodule(path)
                except AttributeError:
                    module = None
                if isinstance(module, FactorizedLinear):
                    raise ModelError(f"{prefix}.{i}.{path} is factorized already: factorize the unfactorized source")
                if not isinstance(module, nn.Linear):
                    raise ModelError(f"factorize supports BERT-style encoder layers; {model_type} has no {path} Linear")
                found[f"{prefix}.{i}.{path}"] = module
    return found


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def factorization_ranks(model: nn.Module) -> dict[str, int]:
    """The rank of every :class:`FactorizedLinear` in ``model``, by module path."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, FactorizedLinear)}


def record_ranks(model: nn.Module) -> None:
    # In the config, so every save_pretrained (recovery training's too) writes the ranks with the weights.
    ranks = factorization_ranks(model)
    if ranks:
        setattr(model.config, FACTORIZATION_KEY, {"ranks": ranks})
    elif hasattr(model.config, FACTORIZATION_KEY):
        delattr(model.config, FACTORIZATION_KEY)


def factorize_module(model: nn.Module, path: str, spectrum: Spectrum, rank: int) -> FactorizedLinear:
    """Replace the Linear at ``path`` by its rank-``rank`` factorization (in place); the ranks are recorded."""
    linear = model.get_submodule(path)
    if not isinstance(linear, nn.Linear):
        raise ModelError(f"{path} is a {type(linear).__name__}, not a Linear")
    module = low_rank(linear, spectrum, rank)
    _replace(model, path, module)
    record_ranks(model)
    return module


def apply_ranks(model: nn.Module, ranks: Mapping[str, int]) -> None:
    """Put empty :class:`FactorizedLinear` modules of ``ranks`` in place (load time: weights come next)."""
    for path, rank in ranks.items():
        try:
            linear = model.get_submodule(path)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise ModelError(f"{FACTORIZATION_KEY}: {path} is not a Linear of this model")
        full = min(linear.in_features, linear.out_features)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
            raise ModelError(f"{FACTORIZATION_KEY}: the rank of {path} must be in 1..{full}, got {rank!r}")
        weight = linear.weight
        module = FactorizedLinear(
            linear.in_features, linear.out_features, rank, linear.bias is not None, weight.device, weight.dtype
        )
        _replace(model, path, module)
    record_ranks(model)


def saved_ranks(config, folder: Path) -> dict[str, int]:
    """The ranks a folder's config records, checked to be a ``{"ranks": {path: int}}`` object."""
    saved = getattr(config, FACTORIZATION_KEY, None)
    where = f"{folder}/config.json: {FACTORIZATION_KEY}"
    ranks = saved.get("ranks") if isinstance(saved, dict) else None
    if not isinstance(ranks, dict) or not all(isinstance(k, str) for k in ranks):
        raise ModelError(f"{where} must be an object {{'ranks': {{module path: rank}}}}, got {json.dumps(saved)[:80]}")
    return ranks


def load_factorized_classifier(folder: str | os.PathLike) -> PreTrainedModel:
    """Load a factorized (and possibly pruned) classifier folder: config -> model -> pruned layout ->
    factorized modules -> safetensors (strict)."""
    from bertsent.modeling.pruned import load_pruned_classifier

    folder = Path(folder)

    def reshape(model: nn.Module) -> None:
        try:
            apply_ranks(model, saved_ranks(model.config, folder))
        except ModelError as e:
            raise ModelError(f"{folder}: {e}") from e

    return load_pruned_classifier(folder, reshape=reshape)
