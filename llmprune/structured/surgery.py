"""Narrowing layers in place: fewer outputs, fewer inputs, least-squares compensation of a consumer.

What each kind of unit removes with these is in ``units/`` (one file per unit).

Layers are narrowed by swapping in smaller parameters on the *same* module objects (and updating
their size attributes), never by replacing modules: the single-pass schedule narrows a consumer from
inside its own forward pre-hook, while the module's forward is about to run.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import LLMPruneError
from ..anatomy import Conv1D, weight_matrix
from .scores import InputStatistics


def _is_conv1d(layer: nn.Module) -> bool:
    return bool(Conv1D) and isinstance(layer, Conv1D)


def replace_parameter(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(layer, name)
    setattr(layer, name, nn.Parameter(value.to(old.dtype).contiguous(), requires_grad=old.requires_grad))


def keep_outputs(layer: nn.Module, rows: list[int] | torch.Tensor) -> None:
    """Keep only output units ``rows`` of a Linear or Conv1D layer (weight and bias)."""
    rows = torch.as_tensor(rows, dtype=torch.long, device=layer.weight.device)
    if _is_conv1d(layer):  # stored (inputs, outputs)
        replace_parameter(layer, "weight", layer.weight.data[:, rows])
        layer.nf = len(rows)
    else:
        replace_parameter(layer, "weight", layer.weight.data[rows])
        layer.out_features = len(rows)
    if layer.bias is not None:
        replace_parameter(layer, "bias", layer.bias.data[rows])


def keep_inputs(layer: nn.Module, columns: list[int] | torch.Tensor, matrix: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> None:
    """Keep only input channels ``columns``; ``matrix`` (outputs x kept inputs) replaces their weights."""
    columns = torch.as_tensor(columns, dtype=torch.long, device=layer.weight.device)
    if matrix is None:
        matrix = weight_matrix(layer)[:, columns]
    if _is_conv1d(layer):
        replace_parameter(layer, "weight", matrix.t())
    else:
        replace_parameter(layer, "weight", matrix)
        layer.in_features = len(columns)
    if bias is not None:
        replace_parameter(layer, "bias", bias)


def least_squares_refit(weight: torch.Tensor, stats: InputStatistics, keep: list[int] | torch.Tensor,
                        bias: torch.Tensor | None = None, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kept columns W'_K (and bias) that best reproduce the target outputs from X_K alone, in least squares.

    The target is W X (+ b), this layer's own outputs, or with a teacher in ``stats`` W X_t (+ b), the
    dense model's outputs of this layer (X_t: its inputs there, token for token), so that errors of the
    earlier shrunk layers get corrected too. Without a bias:
    W'_K = W C[K, :]^T (H[K, K] + damp * mean(diag) I)^-1 with C = X^T X_t (C = H without a teacher).
    A layer that already has a bias re-fits it too (a ones column appended to X; no bias is ever added,
    so configs stay stock).
    """
    keep = torch.as_tensor(keep, dtype=torch.long, device=weight.device)
    h = stats.hessian.double().to(weight.device)
    teacher = stats.cross is not None
    cross = stats.cross.double().to(weight.device) if teacher else h
    w = weight.double()
    h_kk = h[keep][:, keep]
    jitter = damp * float(h_kk.diagonal().mean().clamp_min(1e-12))
    h_kk = h_kk + jitter * torch.eye(len(keep), dtype=h.dtype, device=h.device)
    right = cross[keep] @ w.t()  # X_K^T X_t W^T
    if bias is None:
        solution = torch.linalg.solve(h_kk, right)
        return solution.t().to(weight.dtype), None
    sums = stats.sums.double().to(weight.device)
    target_sums = stats.teacher_sums.double().to(weight.device) if teacher else sums
    b = bias.double()
    n = float(stats.count)
    top = torch.cat([h_kk, sums[keep, None]], dim=1)
    bottom = torch.cat([sums[None, keep], torch.tensor([[n]], dtype=h.dtype, device=h.device)], dim=1)
    right = torch.cat([right + sums[keep, None] * b[None, :], (target_sums @ w.t() + n * b)[None, :]], dim=0)
    solution = torch.linalg.solve(torch.cat([top, bottom], dim=0), right)
    return solution[:-1].t().to(weight.dtype), solution[-1].to(bias.dtype)


def narrow_consumer(layer: nn.Module, keep: list[int], stats: InputStatistics | None, damp: float) -> None:
    """Drop a consumer's input channels outside ``keep``, re-fitting the rest when ``stats`` are given."""
    if stats is None:
        keep_inputs(layer, keep)
        return
    matrix, bias = least_squares_refit(weight_matrix(layer).float(), stats, keep,
                                       None if layer.bias is None else layer.bias.data.float(), damp)
    keep_inputs(layer, keep, matrix, bias)


def rows_params(layer: nn.Module) -> int:
    """Parameters one output unit of a layer holds: a row of weights plus its bias."""
    return weight_matrix(layer).shape[1] + (1 if layer.bias is not None else 0)


def submodule(block: nn.Module, name: str) -> nn.Module:
    try:
        return block.get_submodule(name)
    except AttributeError:
        raise LLMPruneError(f"{type(block).__name__} has no layer '{name}' where its family's layout puts it") from None
