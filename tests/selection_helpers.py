"""Comparing masks that were selected from float scores, on any CPU.

Two computations of one score (another summation order: statistics gathered in chunks instead of at once,
a matrix product split into row blocks) agree to the last few bits, and which bits depends on the kernels
the CPU gets. A weight whose score sits that close to its row's selection boundary may land on either side,
so masks are compared exactly everywhere except at those near-ties."""
from __future__ import annotations

import torch

# float32 sums of a few hundred squares differ by up to ~1e-5 relative between orders; ten times that
NEAR_TIE_RTOL = 1e-4


def near_ties(scores: torch.Tensor, pruned_per_row: int, rtol: float = NEAR_TIE_RTOL) -> torch.Tensor:
    """Entries whose score is within ``rtol`` of their row's boundary between pruned and kept."""
    ordered = scores.double().sort(dim=1).values
    boundary = (ordered[:, pruned_per_row - 1] + ordered[:, pruned_per_row]).unsqueeze(1) / 2
    return (scores.double() - boundary).abs() <= rtol * boundary.abs()


def assert_same_selection(keep: torch.Tensor, expected: torch.Tensor, scores: torch.Tensor, pruned_per_row: int) -> None:
    """``keep`` equals ``expected`` outside near-ties, and near-ties are rare enough that this means something."""
    ties = near_ties(scores, pruned_per_row)
    assert int(ties.sum()) <= max(2, ties.numel() // 100), f"{int(ties.sum())} near-ties: the comparison would say little"
    differ = (keep != expected) & ~ties
    assert not differ.any(), f"{int(differ.sum())} entries selected differently away from any near-tie"
