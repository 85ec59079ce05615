"""Pruning one weight matrix, and one block: statistics, masks (and new values), outputs for the next block."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..anatomy import LayerSelection, PrunableWeight, prunable_weights
from ..errors import LLMPruneError
from ..methods import PruningMethod, SparsityTarget
from .capture import BlockInputs, run_block
from .statistics import BlockStatistics

# A row-separable method (see PruningMethod.row_separable) is given a slice of rows at a time:
# its float32 working copies then cost a slice instead of the whole matrix (for a 4096 x 11008
# layer about 1 GB of temporaries becomes about 40 MB), which keeps streaming's peak near one block.
ELEMENTS_PER_SLICE = 2**21


def prune_weight(weight: PrunableWeight, method: PruningMethod, stats: Any, target: SparsityTarget) -> None:
    """Prune one matrix in place: ask the method for a mask (and new values), zero the rest."""
    matrix = weight.matrix()
    rows_per_slice = max(1, ELEMENTS_PER_SLICE // matrix.shape[1])
    if method.row_separable and matrix.shape[0] > rows_per_slice:
        for start in range(0, matrix.shape[0], rows_per_slice):
            rows = matrix[start : start + rows_per_slice]
            part = rows.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
            result = method.prune(part, stats, target)
            rows.copy_(part.masked_fill_(~result.keep, 0.0).to(rows.dtype))
        return
    working = matrix.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    result = method.prune(working, stats, target)
    new_values = result.weight if result.weight is not None else working
    weight.set_matrix(new_values.masked_fill(~result.keep, 0.0))


def check_pattern_fits(blocks: nn.ModuleList, path: str, target: SparsityTarget, selection: LayerSelection) -> None:
    """Fail before any work if a selected weight's input size is not a multiple of M."""
    if not target.semi_structured:
        return
    for index, block in enumerate(blocks):
        for name, weight in prunable_weights(block, selection).items():
            columns = weight.matrix().shape[1]
            if columns % target.m:
                raise LLMPruneError(
                    f"layer {path}.{index}.{name} has {columns} inputs, not a multiple of M={target.m} "
                    f"for pattern {target.pattern}; exclude it with --ignore"
                )


@torch.no_grad()
def prune_block(
    block: nn.Module,
    method: PruningMethod,
    target: SparsityTarget,
    inputs: list[BlockInputs] | None,
    selection: LayerSelection = LayerSelection(),
) -> tuple[dict[str, PrunableWeight], list[torch.Tensor] | None]:
    """Prune one block's selected weights in place; returns them and the block's pruned outputs.

    With ``inputs`` (the block's calibration inputs) the statistics come from them; one input
    chunk means the fused single pass (each layer pruned inside the forward the moment its whole
    input is seen, so the same pass yields the pruned outputs); several chunks mean a statistics
    pass, pruning, and an output pass. Without inputs the method prunes from the weights alone
    and there are no outputs.
    """
    weights = prunable_weights(block, selection)
    if not (method.needs_calibration and inputs):
        for weight in weights.values():
            prune_weight(weight, method, None, target)
        return weights, None

    def prune(name: str) -> None:
        prune_weight(weights[name], method, gathered.take(name), target)

    single_pass = len(inputs) == 1
    gathered = BlockStatistics(method, weights, on_sight=prune if single_pass else None)
    try:
        outputs = run_block(block, inputs, gathered.end_call)
        for name in weights:  # layers the forward never reached (e.g. unrouted experts), or all of them
            if name not in gathered.done:
                prune(name)
    finally:
        gathered.remove()
    if not single_pass:
        outputs = run_block(block, inputs)
    return weights, outputs


@torch.no_grad()
def gather_block_statistics(
    block: nn.Module,
    provider,
    inputs: list[BlockInputs],
    selection: LayerSelection = LayerSelection(),
) -> tuple[dict[str, tuple[PrunableWeight, Any]], list[torch.Tensor]]:
    """Run one block as it is on ``inputs``, folding each selected weight's inputs into ``provider``'s
    statistics; returns name -> (weight, statistics or None) and the block's outputs."""
    weights = prunable_weights(block, selection)
    recorder = BlockStatistics(provider, weights)
    try:
        outputs = run_block(block, inputs, recorder.end_call)
    finally:
        recorder.remove()
    return {name: (weight, recorder.stats.get(name)) for name, weight in weights.items()}, outputs
