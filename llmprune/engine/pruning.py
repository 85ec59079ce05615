"""Pruning one weight matrix, and one block: statistics, masks (and new values), outputs for the next block."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..anatomy import LayerSelection, PrunableWeight, prunable_weights
from ..errors import LLMPruneError
from ..methods import PruningMethod, SparsityTarget
from .capture import BlockInputs, run_block
from .experts import ExpertPolicy, run_until_experts
from .statistics import BlockGathering

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
    experts: ExpertPolicy = ExpertPolicy(),
    routing: dict | None = None,
) -> tuple[dict[str, PrunableWeight], list[torch.Tensor] | None]:
    """Prune one block's selected weights in place; returns them and the block's pruned outputs.

    With ``inputs`` (the block's calibration inputs) the statistics come from them; one input
    chunk means the fused single pass (each layer pruned inside the forward the moment its whole
    input is seen, each routed expert inside its experts module's call, so the same pass yields the
    pruned outputs); several chunks mean a statistics pass, pruning, and an output pass. Without
    inputs the method prunes from the weights alone and there are no outputs. ``routing``, when
    given, receives each experts module's tokens per expert and fallbacks.
    """
    weights = prunable_weights(block, selection)
    if not (method.needs_calibration and inputs):
        for weight in weights.values():
            prune_weight(weight, method, None, target)
        return weights, None

    done: set[str] = set()

    def prune(name: str, stats: Any) -> None:
        prune_weight(weights[name], method, stats, target)
        done.add(name)

    single_pass = len(inputs) == 1
    gathered = BlockGathering(block, method, weights, experts, prune if single_pass else None)
    try:
        outputs = run_block(block, inputs, gathered.layers.end_call)
        gathered.remove()
        if not single_pass:
            for routed in gathered.experts:
                routed.resolve(lambda: run_until_experts(block, inputs))
                for expert in range(routed.count):  # one expert's statistics at a time, released once pruned
                    stats_in, stats_out = routed.take(expert)
                    for name in routed.inputs[expert]:
                        prune(name, stats_in)
                    if routed.outputs[expert] is not None:
                        prune(routed.outputs[expert], stats_out)
                    del stats_in, stats_out
        for name in weights:  # layers the forward never reached (e.g. unrouted list experts), or all of them
            if name not in done:
                prune(name, gathered.layer_statistics(name) if not weights[name].fused else None)
    finally:
        gathered.remove()
    if routing is not None:
        routing.update(gathered.routing())
    if not single_pass:
        outputs = run_block(block, inputs)
    return weights, outputs


@torch.no_grad()
def gather_block_statistics(
    block: nn.Module,
    provider,
    inputs: list[BlockInputs],
    selection: LayerSelection = LayerSelection(),
    experts: ExpertPolicy = ExpertPolicy(),
) -> tuple[dict[str, tuple[PrunableWeight, Any]], list[torch.Tensor]]:
    """Run one block as it is on ``inputs``, folding each selected weight's inputs into ``provider``'s
    statistics (routed experts from their own tokens); returns name -> (weight, statistics or None)
    and the block's outputs."""
    weights = prunable_weights(block, selection)
    gathered = BlockGathering(block, provider, weights, experts)
    try:
        outputs = run_block(block, inputs, gathered.layers.end_call)
        gathered.remove()
        stats = {name: (weight, gathered.layer_statistics(name)) for name, weight in weights.items() if not weight.fused}
        for routed in gathered.experts:
            routed.resolve(lambda: run_until_experts(block, inputs))
            for expert in range(routed.count):
                stats_in, stats_out = routed.take(expert)
                stats.update({name: (weights[name], stats_in) for name in routed.inputs[expert]})
                if routed.outputs[expert] is not None:
                    stats[routed.outputs[expert]] = (weights[routed.outputs[expert]], stats_out)
    finally:
        gathered.remove()
    return {name: stats.get(name, (weight, None)) for name, weight in weights.items()}, outputs
