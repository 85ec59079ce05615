"""OWL, outlier-weighted layer-wise sparsity (Yin et al., ICML 2024): how much to prune each block.

Two steps, both here so that nothing else needs to know OWL is defined on Wanda's scores:
1. measure: run the dense model block by block and take each block's outlier ratio D_l, the
   fraction of its Wanda scores (|W| x input norm, over all its selected layers) above M times
   their mean;
2. allocate: blocks rich in outliers are pruned less. The paper min-max scales D to
   [0, 2*lambda], subtracts the mean and adds (1 - S) to get each block's density.

Two guarantees the allocation adds to the paper's recipe, so the report can promise them:
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
from torch import nn

from ..anatomy import LayerSelection
from ..engine import BlockInputs, ExpertPolicy, Lifecycle, gather_block_statistics, prunable_weight_count, propagate
from ..errors import LLMPruneError
from ..methods import SparsityTarget
from ..methods.wanda import Wanda
from .limits import MAX_BLOCK_SPARSITY


# ---------------------------------------------------------------- measuring

def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Fraction of all entries of ``scores`` (one block's layers) above ``m`` times their common mean."""
    total = sum(float(s.double().sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    if count == 0:
        return 0.0
    threshold = m * total / count
    above = sum(int((s > threshold).sum()) for s in scores)
    return above / count


@torch.no_grad()
def block_outlier_ratio(block: nn.Module, inputs: list[BlockInputs], m: float, selection: LayerSelection = LayerSelection(),
                        experts: ExpertPolicy = ExpertPolicy()) -> float:
    """OWL's outlier ratio of one dense block; each item's hidden states become the dense outputs."""
    gathered, outputs = gather_block_statistics(block, Wanda(), inputs, selection, experts)
    propagate(inputs, outputs)
    scores = []
    for weight, norms_squared in gathered.values():
        magnitudes = weight.matrix().float().abs()
        scores.append(magnitudes if norms_squared is None else magnitudes * norms_squared.sqrt().unsqueeze(0))
    return outlier_ratio(scores, m)


def measure_outlier_ratios(lifecycle: Lifecycle, inputs: list[BlockInputs], m: float = 5.0,
                           selection: LayerSelection = LayerSelection()) -> list[float]:
    """OWL's outlier ratio of every block of the dense model, calibration propagated through dense blocks."""
    ratios: list[float] = []
    lifecycle.sweep("OWL outlier ratios", lambda index, block: ratios.append(
        block_outlier_ratio(block, inputs, m, selection, lifecycle.experts)), write=False)
    return ratios


# ---------------------------------------------------------------- allocating

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


def check_owl_options(target: SparsityTarget, owl: bool, owl_m: float, owl_lambda: float) -> None:
    if not owl:
        return
    if target.semi_structured:
        raise LLMPruneError(
            f"OWL gives blocks different sparsities, which an N:M pattern ({target.pattern}) cannot; "
            "use --sparsity with --owl"
        )
    if not owl_m > 0:
        raise LLMPruneError(f"--owl-m must be positive, got {owl_m}")
    if not 0 <= owl_lambda < 1:
        raise LLMPruneError(f"--owl-lambda must be in [0, 1), got {owl_lambda}")


class OWL:
    """The allocation the engine runs before pruning: measure every dense block, then allocate."""

    name = "owl"

    def __init__(self, m: float = 5.0, lam: float = 0.08):
        self.m, self.lam = m, lam

    def allocate(self, lifecycle: Lifecycle, dense_inputs: list[BlockInputs] | None, target: SparsityTarget,
                 selection: LayerSelection) -> tuple[dict, list[SparsityTarget]]:
        """({"owl": entry}, per-block targets)."""
        if dense_inputs is None:
            raise LLMPruneError("OWL needs calibration data")
        ratios = measure_outlier_ratios(lifecycle, dense_inputs, self.m, selection)
        sizes = [prunable_weight_count(block, selection) for block in lifecycle.blocks]
        block_sparsity = owl_sparsities(ratios, target.sparsity, self.lam, sizes)
        entry = {
            "m": self.m,
            "lambda": self.lam,
            "outlier_ratios": [round(r, 6) for r in ratios],
            "block_sparsity": [round(s, 6) for s in block_sparsity],
        }
        return {self.name: entry}, [SparsityTarget(sparsity=s) for s in block_sparsity]
