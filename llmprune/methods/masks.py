"""Turning scores into keep-masks: per row, per layer, or N of every M. Lower score = pruned first."""
from __future__ import annotations

import torch

from .base import SparsityTarget


# Above this many scores, a whole-layer k-th value is found inside a narrow band of values located
# by a sample (a 1536 x 576 layer, one thread, CPU time: kthvalue of the whole 12-14 ms, this about
# 7 ms); ADMM selects a whole-layer mask at each of its first 15 iterations.
BAND_SEARCH_MIN = 2**16
BAND_SAMPLE = 8192


def _kth_smallest_flat(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count``-th smallest entry (1-based) of a 1-D tensor, exactly, as a 1-element tensor.

    A random sample brackets the answer between two values a few standard deviations of the
    sample rank apart; if the bracket holds it (checked by counting), only the entries inside it
    go through ``kthvalue``; otherwise the whole tensor does.
    """
    total = scores.numel()
    if total < BAND_SEARCH_MIN:
        return torch.kthvalue(scores, count, dim=0, keepdim=True).values
    generator = torch.Generator(device=scores.device).manual_seed(0)
    sample = scores[torch.randint(0, total, (BAND_SAMPLE,), generator=generator, device=scores.device)]
    fraction = count / total
    margin = 6.0 * (BAND_SAMPLE * fraction * (1.0 - fraction)) ** 0.5 + 8.0
    low_rank = max(1, int(fraction * BAND_SAMPLE - margin))
    high_rank = min(BAND_SAMPLE, int(fraction * BAND_SAMPLE + margin) + 1)
    low = torch.kthvalue(sample, low_rank).values
    high = torch.kthvalue(sample, high_rank).values
    below = int(torch.count_nonzero(scores < low))
    inside = scores[(scores >= low) & (scores <= high)]
    if below < count <= below + inside.numel():
        return torch.kthvalue(inside, count - below, dim=0, keepdim=True).values
    return torch.kthvalue(scores, count, dim=0, keepdim=True).values


def _keep_all_but_lowest(scores: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    """False for exactly ``count`` lowest scores along ``dim``; ties at the threshold go left to right.

    A k-th value threshold plus a tie-break is several times faster on CPU than ``topk`` with
    a large k (half a layer, for magnitude pruning at 50%).
    """
    if count <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if scores.dim() == 1:
        threshold = _kth_smallest_flat(scores, count)
    else:
        threshold = torch.kthvalue(scores, count, dim=dim, keepdim=True).values
    above = scores > threshold
    if bool((torch.count_nonzero(above, dim=dim) == scores.shape[dim] - count).all()):
        return above  # exactly ``count`` scores at or below the threshold: no tie to break (the usual case)
    below = scores < threshold
    at = scores == threshold
    still_needed = count - below.sum(dim=dim, keepdim=True)
    tie_rank = torch.cumsum(at, dim=dim, dtype=torch.int32)  # half the memory of the default int64
    return ~(below | (at & (tie_rank <= still_needed)))


def keep_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Every row loses exactly int(columns * sparsity) weights (Wanda's comparison group)."""
    return _keep_all_but_lowest(scores, int(scores.shape[1] * sparsity), dim=1)


def keep_per_layer(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The whole matrix loses exactly int(numel * sparsity) weights (magnitude pruning's group)."""
    flat = _keep_all_but_lowest(scores.reshape(-1), int(scores.numel() * sparsity), dim=0)
    return flat.view_as(scores)


# Up to this M, a group's ranks come from the M x (M - 1) comparisons inside it (2:4 on a
# 1536 x 576 layer, one thread, CPU time: about 6 ms against 14 ms for a k-th value along groups of 4).
PAIRWISE_MAX_M = 8


def _keep_by_rank_in_groups(grouped: torch.Tensor, n: int) -> torch.Tensor:
    """Rank = how many entries of the group come before this one by (score, position); prune the N first.

    The same order as the k-th value path: lower scores first, ties left to right. The group's
    positions are moved to the front so every comparison runs over contiguous memory.
    """
    m = grouped.shape[-1]
    positions = grouped.movedim(-1, 0).contiguous()
    keep = torch.empty(positions.shape, dtype=torch.bool, device=grouped.device)
    for i in range(m):
        before = torch.zeros(positions.shape[1:], dtype=torch.uint8, device=grouped.device)
        for j in range(m):
            if j != i:  # j comes first if smaller, or equal and to the left
                before += positions[j] <= positions[i] if j < i else positions[j] < positions[i]
        torch.ge(before, n, out=keep[i])
    return keep.movedim(0, -1)


def keep_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every row, each group of M consecutive columns loses its N lowest-scoring weights."""
    rows, cols = scores.shape
    grouped = scores.reshape(rows, cols // m, m)
    if m <= PAIRWISE_MAX_M:
        return _keep_by_rank_in_groups(grouped, n).reshape(rows, cols)
    return _keep_all_but_lowest(grouped, n, dim=2).reshape(rows, cols)


def select(scores: torch.Tensor, target: SparsityTarget, unstructured_group: str = "row") -> torch.Tensor:
    """The mask for a target: N:M if it has a pattern, else per row or per layer."""
    if target.semi_structured:
        return keep_n_of_m(scores, target.n, target.m)
    if unstructured_group == "row":
        return keep_per_row(scores, target.sparsity)
    return keep_per_layer(scores, target.sparsity)
