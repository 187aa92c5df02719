"""Exact inference-time rewrites of trained parameters (docs/model.md, "ONNX export").

Each function turns trained modules into plain tensors that compute the same function with less
work. Products are formed in float64 and rounded once to float32, so a folded weight is as close
to the exact product as float32 allows.

* QNN layer: with dropout off, ``Σ_r (W_r z + b_r)`` is ``W' z + b'`` with ``W' = Σ_r W_r``; and
  BatchNorm at inference is ``a ⊙ q + c``, which moves into the bracket because ``q = z ⊙ h``:
  ``a ⊙ (z ⊙ (W' z + b')) + c = z ⊙ ((diag(a) W') z + a ⊙ b') + c``.
* ASTA: ``(W_q t)·(W_k s) / sqrt(a) = t · (A s)`` with ``A = W_qᵀ W_k / sqrt(a)``, and
  ``W_o Σ_j w_j W_v s_j = Σ_j w_j (W_o W_v) s_j``. ``A s`` and ``W_o W_v s`` depend on the history
  item alone, so they are computed once per user, not once per candidate.
* Linear followed by BatchNorm (the MLP blocks): one linear map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.layers import AdaptiveSparseTargetAttention, QuadraticLayer


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def batchnorm_affine(norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) in float64 with ``BN(x) = a ⊙ x + c`` at inference."""
    assert norm.running_mean is not None and norm.running_var is not None
    scale = torch.rsqrt(_f64(norm.running_var) + norm.eps)
    weight = _f64(norm.weight) if norm.weight is not None else torch.ones_like(scale)
    bias = _f64(norm.bias) if norm.bias is not None else torch.zeros_like(scale)
    a = weight * scale
    return a, bias - a * _f64(norm.running_mean)


@dataclass
class FoldedQuadratic:
    """``z + act(z ⊙ (weight z + bias) + shift)``; ``slope`` is PReLU's, or None for ReLU."""

    weight: torch.Tensor  # (D, D)
    bias: torch.Tensor  # (D,)
    shift: torch.Tensor  # (D,)
    slope: torch.Tensor | None  # (1,)


def fold_quadratic(layer: QuadraticLayer) -> FoldedQuadratic:
    width, rows = layer.width, layer.rows
    weight = _f64(layer.linear.weight).view(rows, width, width).sum(dim=0)
    bias = _f64(layer.linear.bias).view(rows, width).sum(dim=0)
    a, c = batchnorm_affine(layer.norm)
    slope = None
    if isinstance(layer.activation, nn.PReLU):
        slope = layer.activation.weight.detach().float().clone()
    return FoldedQuadratic(
        weight=(a[:, None] * weight).float(),
        bias=(a * bias).float(),
        shift=c.float(),
        slope=slope,
    )


@dataclass
class FoldedAttention:
    """Per history item ``key = A s`` and ``value = W_o W_v s``, both (n, n)."""

    key: torch.Tensor
    value: torch.Tensor


def fold_attention(attention: AdaptiveSparseTargetAttention) -> FoldedAttention:
    query, key = _f64(attention.query.weight), _f64(attention.key.weight)
    value, output = _f64(attention.value.weight), _f64(attention.output.weight)
    return FoldedAttention(
        key=(query.T @ key * attention.scale).float(),
        value=(output @ value).float(),
    )


def fold_linear_batchnorm(
    linear: nn.Linear, norm: nn.BatchNorm1d
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) with ``W x + b = BN(linear(x))`` at inference."""
    a, c = batchnorm_affine(norm)
    bias = _f64(linear.bias) if linear.bias is not None else torch.zeros_like(a)
    return (a[:, None] * _f64(linear.weight)).float(), (a * bias + c).float()
