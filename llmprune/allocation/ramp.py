"""Depth-ramp allocation (ATP, 2025): block sparsities rising linearly with depth, one parameter (the step).

Block l (0 = nearest the embeddings) gets s_l = S + step * (l - c), with c the mean depth weighted by
the blocks' prunable weights n_l. Then sum_l n_l s_l = S sum_l n_l: the target holds over the pruned
weights, not just over blocks, even when blocks hold different numbers of prunable weights (a
narrower first block, or --targets/--ignore leaving some blocks lighter).

Bounds: every block stays within [0, MAX_BLOCK_SPARSITY] (OWL's cap, below 1). Clipping the ends
would break the mean, and moving the excess elsewhere would bend the ramp; instead, when the ramp
would cross a bound, the step is scaled down to the largest that fits. The ramp stays linear and
monotone, the mean stays exact, and the report names the step actually used.
"""
from __future__ import annotations

import math
from typing import Sequence

from ..engine import prunable_weight_count
from ..errors import LLMPruneError
from ..methods import SparsityTarget
from .limits import MAX_BLOCK_SPARSITY


def depth_ramp_sparsities(sparsity: float, step: float, sizes: Sequence[int]) -> tuple[list[float], float]:
    """(per-block sparsities, step used): a linear ramp in depth whose size-weighted mean is ``sparsity``.

    ``sizes``: prunable weights per block, in depth order. ``step``: sparsity added per block of
    depth (negative prunes the first blocks more); scaled down when a block would leave
    [0, MAX_BLOCK_SPARSITY].
    """
    if not 0.0 <= sparsity < 1.0:
        raise LLMPruneError(f"sparsity must be in [0, 1), got {sparsity}")
    if not math.isfinite(step):
        raise LLMPruneError(f"the depth-ramp step must be a finite number, got {step}")
    weights = [float(size) for size in sizes]
    if not weights:
        return [], 0.0
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise LLMPruneError("depth ramp: block sizes must be non-negative numbers of weights, not all zero")
    centre = sum(depth * w for depth, w in enumerate(weights)) / sum(weights)
    rises = [step * (depth - centre) for depth in range(len(weights))]
    factor = 1.0
    highest, lowest = max(rises), min(rises)
    if highest > MAX_BLOCK_SPARSITY - sparsity:
        factor = min(factor, (MAX_BLOCK_SPARSITY - sparsity) / highest)
    if -lowest > sparsity:
        factor = min(factor, sparsity / -lowest)
    # The clamp only absorbs rounding (a bound met exactly may land a hair outside it).
    result = [min(MAX_BLOCK_SPARSITY, max(0.0, sparsity + factor * rise)) for rise in rises]
    return result, step * factor


def depth_ramp_allocation(target: SparsityTarget, step: float, sizes: Sequence[int]) -> tuple[dict, list[SparsityTarget]]:
    """(report entry, per-block targets) of the depth ramp; ``sizes`` as for ``depth_ramp_sparsities``.

    The entry mirrors OWL's (``report["owl"]``): what was asked, and each block's sparsity.
    """
    if target.semi_structured:
        raise LLMPruneError(
            f"a depth ramp gives blocks different sparsities, which an N:M pattern ({target.pattern}) cannot; "
            "use a sparsity instead"
        )
    block_sparsity, step_used = depth_ramp_sparsities(target.sparsity, step, sizes)
    entry = {
        "step": step,
        "step_used": round(step_used, 9),
        "block_sparsity": [round(s, 6) for s in block_sparsity],
    }
    return entry, [SparsityTarget(sparsity=s) for s in block_sparsity]


class DepthRamp:
    """The depth ramp as an allocation the engine runs before pruning (no measuring sweep needed)."""

    name = "depth_ramp"

    def __init__(self, step: float):
        self.step = step

    def allocate(self, lifecycle, dense_inputs, target: SparsityTarget, selection) -> tuple[dict, list[SparsityTarget]]:
        """({"depth_ramp": entry}, per-block targets)."""
        sizes = [prunable_weight_count(block, selection) for block in lifecycle.blocks]
        entry, targets = depth_ramp_allocation(target, self.step, sizes)
        return {self.name: entry}, targets
