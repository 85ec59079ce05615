"""The pruning engine: one block lifecycle for every mode (see ``lifecycle``).

``capture`` records what block 0 receives; ``statistics`` gathers each layer's input statistics
inside the block's own forward; ``pruning`` turns them into pruned weights, block by block;
``lifecycle`` walks the blocks wherever they live and runs the after-prune steps.
"""
from .capture import BlockInputs, capture_block_inputs, copy_inputs, run_block
from .experts import EXPERT_FALLBACKS, EXPERT_STATISTICS, ExpertPolicy
from .lifecycle import (Allocation, BlockContext, BlockHome, BlockStep, InMemory, Lifecycle, PruneOutcome,
                        prunable_weight_count, propagate, prune_model)
from .pruning import ELEMENTS_PER_SLICE, check_pattern_fits, gather_block_statistics, prune_block, prune_weight

__all__ = [
    "Allocation", "BlockContext", "EXPERT_FALLBACKS", "EXPERT_STATISTICS", "ExpertPolicy", "BlockHome", "BlockInputs", "BlockStep", "ELEMENTS_PER_SLICE", "InMemory",
    "Lifecycle", "PruneOutcome", "capture_block_inputs", "check_pattern_fits", "copy_inputs",
    "gather_block_statistics", "prunable_weight_count", "propagate", "prune_block", "prune_model",
    "prune_weight", "run_block",
]
