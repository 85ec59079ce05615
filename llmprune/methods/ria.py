"""RIA, relative importance and activations (Zhang et al., ICLR 2024).

Score S_ij = (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||_2 ** 0.5: a weight
counts relative to the other weights of its row and of its column, so a channel full of large
weights does not win every comparison. Compared over the whole layer for unstructured
sparsity (as in the paper), within each N:M group otherwise. No weight update.
"""
from __future__ import annotations

import torch

from . import masks
from .base import PruneResult, SparsityTarget
from .wanda import Wanda


def ria_scores(weight: torch.Tensor, input_sq_sums: torch.Tensor | None) -> torch.Tensor:
    """Relative importance of every weight, times the square root of its input's L2 norm."""
    magnitude = weight.abs()
    # A row or column of zeros would divide by zero; its relative importance is zero anyway.
    row_sums = magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    col_sums = magnitude.sum(dim=0, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    scores = magnitude / row_sums + magnitude / col_sums
    if input_sq_sums is not None:
        # The statistics are sums of squares, so ||X_j||^0.5 is their fourth root.
        scores = scores * input_sq_sums.pow(0.25).unsqueeze(0)
    return scores


class RIA(Wanda):
    """Same statistics as Wanda (per-input sums of squares), different score and comparison group."""

    name = "ria"
    # Column sums and the layer-wide comparison need every row at once (Wanda's slicing would be wrong here).
    row_separable = False

    def prune(self, weight: torch.Tensor, stats: torch.Tensor | None, target: SparsityTarget) -> PruneResult:
        return PruneResult(keep=masks.select(ria_scores(weight, stats), target, unstructured_group="layer"))
