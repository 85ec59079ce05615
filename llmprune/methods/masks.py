"""Turning scores into keep-masks: per row, per layer, or N of every M. Lower score = pruned first."""
from __future__ import annotations

import torch

from .base import SparsityTarget


def _keep_all_but_lowest(scores: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    """False for exactly ``count`` lowest scores along ``dim``; ties at the threshold go left to right.

    A k-th value threshold plus a tie-break is several times faster on CPU than ``topk`` with
    a large k (half a layer, for magnitude pruning at 50%).
    """
    if count <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, count, dim=dim, keepdim=True).values
    below = scores < threshold
    at = scores == threshold
    still_needed = count - below.sum(dim=dim, keepdim=True)
    if bool((at.sum(dim=dim, keepdim=True) == still_needed).all()):
        return ~(below | at)  # no group has surplus ties: spare the int64 ranks of every entry
    tie_rank = torch.cumsum(at, dim=dim)
    return ~(below | (at & (tie_rank <= still_needed)))


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
