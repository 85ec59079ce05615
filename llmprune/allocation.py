"""OWL, outlier-weighted layer-wise sparsity (Yin et al., ICML 2024): how much to prune each block.

Pure arithmetic, no models: given each block's outlier ratio D_l (the fraction of its Wanda
scores above M times their mean), blocks rich in outliers are pruned less. The paper min-max
scales D to [0, 2*lambda], subtracts the mean and adds (1 - S) to get each block's density.

Two guarantees this module adds to the paper's recipe, so the report can promise them:
- the mean is taken over *weights*, not blocks: blocks of different sizes (a model whose first
  block is narrower, or --targets/--ignore leaving some blocks lighter) still end at exactly S
  overall;
- every block stays within S +- lambda (the paper's mapping can reach S +- 2*lambda when the
  ratios are lopsided, e.g. one outlier-heavy block among many plain ones) and within [0, 1):
  when a deviation would cross a bound, all deviations are scaled down by the same factor,
  which keeps their order, their proportions and the exact mean.
"""
from __future__ import annotations

from typing import Sequence

import torch

# Highest per-block sparsity handed out; a block pruned to 100% would cut the residual stream's
# contribution of that block entirely, which no allocation should do by accident.
MAX_BLOCK_SPARSITY = 0.99


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Fraction of all entries of ``scores`` (one block's layers) above ``m`` times their common mean."""
    total = sum(float(s.double().sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    if count == 0:
        return 0.0
    threshold = m * total / count
    above = sum(int((s > threshold).sum()) for s in scores)
    return above / count


def owl_sparsities(
    ratios: Sequence[float],
    sparsity: float,
    lam: float = 0.08,
    sizes: Sequence[int] | None = None,
) -> list[float]:
    """Per-block sparsities whose size-weighted mean is ``sparsity``, each within ``sparsity +- lam``.

    ``ratios``: outlier ratio per block (higher = more outliers = pruned less). ``sizes``: prunable
    weights per block (equal sizes when omitted).
    """
    count = len(ratios)
    if count == 0:
        return []
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if lam < 0:
        raise ValueError(f"lambda must be non-negative, got {lam}")
    weights = torch.tensor([1.0] * count if sizes is None else [float(s) for s in sizes], dtype=torch.float64)
    if weights.numel() != count or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("sizes must be one non-negative number per block, not all zero")
    d = torch.tensor([float(r) for r in ratios], dtype=torch.float64)
    spread = d.max() - d.min()
    if spread <= 0 or lam == 0:
        return [sparsity] * count
    scaled = (d - d.min()) / spread * (2 * lam)  # the paper's min-max scaling to [0, 2*lambda]
    mean = (scaled * weights).sum() / weights.sum()
    deviation = scaled - mean  # density above the mean; sparsity goes down by as much
    # Largest factor <= 1 that keeps every block inside S +- lambda and inside [0, MAX_BLOCK_SPARSITY].
    factor = 1.0
    largest_up = float((-deviation).max())  # the most a block's sparsity rises
    largest_down = float(deviation.max())  # the most a block's sparsity falls
    for room, need in (
        (lam, largest_up),
        (lam, largest_down),
        (MAX_BLOCK_SPARSITY - sparsity, largest_up),
        (sparsity, largest_down),
    ):
        if need > 0:
            factor = min(factor, room / need)
    result = sparsity - factor * deviation
    return [float(v) for v in result]
