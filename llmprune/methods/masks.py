"""Turning scores into keep-masks: per row, per layer, or N of every M. Lower score = pruned first."""
from __future__ import annotations

import torch

from .base import SparsityTarget


def _keep_all_but_lowest(scores: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count > 0:
        lowest = torch.topk(scores, count, dim=dim, largest=False).indices
        keep.scatter_(dim, lowest, False)
    return keep


def keep_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Every row loses exactly int(columns * sparsity) weights (Wanda's comparison group)."""
    return _keep_all_but_lowest(scores, int(scores.shape[1] * sparsity), dim=1)


def keep_per_layer(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The whole matrix loses exactly int(numel * sparsity) weights (magnitude pruning's group)."""
    flat = _keep_all_but_lowest(scores.reshape(-1), int(scores.numel() * sparsity), dim=0)
    return flat.view_as(scores)


def keep_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every row, each group of M consecutive columns loses its N lowest-scoring weights."""
    rows, cols = scores.shape
    grouped = scores.reshape(rows, cols // m, m)
    return _keep_all_but_lowest(grouped, n, dim=2).reshape(rows, cols)


def select(scores: torch.Tensor, target: SparsityTarget, unstructured_group: str = "row") -> torch.Tensor:
    """The mask for a target: N:M if it has a pattern, else per row or per layer."""
    if target.semi_structured:
        return keep_n_of_m(scores, target.n, target.m)
    if unstructured_group == "row":
        return keep_per_row(scores, target.sparsity)
    return keep_per_layer(scores, target.sparsity)
