"""Whole decoder blocks: ranked on the dense model before any block is shrunk, deleted after the block loop.

The ranking scores and the linear bridge for a removed run are in ``structured/blocks.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...anatomy import find_blocks, weight_matrix
from ...engine import BlockInputs, Lifecycle
from ...errors import LLMPruneError
from ..blocks import block_removal_scores, block_skip_losses, choose_blocks
from ..layouts import FamilyLayout
from ..surgery import keep_inputs, submodule
from .base import Choice, PlanContext, Shape, Unit, UnitCosts


@dataclass
class BlockRanking:
    """Which blocks go, and the scores that chose them (for the report)."""

    removed: list[int]
    influence: list[float] | None = None  # angular and span: ShortGPT's block influence
    losses: list[float] | None = None  # loss: the calibration loss with each block skipped


def per_layer_keys(config, layers: int) -> list[str]:
    """Config entries holding one value per block (``layer_types``, sliding-window patterns, ...)."""
    keys = []
    for key, value in config.to_dict().items():
        if isinstance(value, (list, tuple)) and len(value) == layers and "layer" in key:
            keys.append(key)
    return keys


class WholeBlocks(Unit):
    name = "blocks"
    order = 0

    def costs(self, blocks: nn.ModuleList, layout: FamilyLayout) -> dict[str, int]:
        sizes = {sum(p.numel() for p in block.parameters()) for block in blocks}
        if len(sizes) != 1:
            raise LLMPruneError("the decoder blocks differ in size; shrink needs uniform blocks (run it on an unpruned model)")
        return {"blocks": len(blocks), "block_params": sizes.pop()}

    def choices(self, costs: UnitCosts, accepted: list[Choice] | None = None) -> list[Choice]:
        return [Choice(blocks=count) for count in range(costs.blocks)]

    def imbalance(self, choice: Choice, costs: UnitCosts, context: PlanContext) -> float:
        # an equal share of the target for every unit of the mix
        return abs(choice.blocks * costs.block_params - context.target / len(context.units))

    def step(self, costs: UnitCosts, kept: int, multiple_of: int, choices: list[Choice]) -> int:
        return costs.block_params

    def config_edits(self, config, layout: FamilyLayout, shape: Shape) -> list[tuple[str, object]]:
        if not shape.removed_blocks:
            return []
        layers = getattr(config, layout.layers_key)
        gone = set(shape.removed_blocks)
        edits = []
        for key in per_layer_keys(config, layers):
            values = getattr(config, key)
            edits.append((key, type(values)(value for index, value in enumerate(values) if index not in gone)))
        return edits + [(layout.layers_key, layers - len(shape.removed_blocks))]

    @torch.no_grad()
    def rank(self, model: nn.Module, count: int, block_score: str, chunks: list[torch.Tensor] | None,
             inputs: list[BlockInputs] | None, device, progress: bool) -> BlockRanking:
        """The ``count`` blocks to remove, by ``block_score``, on the dense model."""
        if not count:
            return BlockRanking([])
        if block_score == "loss":
            losses = block_skip_losses(model, find_blocks(model)[1], chunks, progress)
            return BlockRanking(choose_blocks("loss", count, losses=losses), losses=losses)
        influence, boundaries = block_removal_scores(Lifecycle(model, device=device, progress=progress), inputs,
                                                     boundaries_too=block_score == "span")
        return BlockRanking(choose_blocks(block_score, count, influence, boundaries), influence=influence)

    def remove(self, model: nn.Module, layout: FamilyLayout, removed: list[int]) -> None:
        """Delete whole decoder blocks and renumber the survivors' ``layer_idx`` (KV-cache slots)."""
        if not removed:
            return
        path, blocks = find_blocks(model)
        kept = [index for index in range(len(blocks)) if index not in set(removed)]
        parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
        survivors = nn.ModuleList([blocks[index] for index in kept])
        inverse_scaling = layout.inverse_layer_idx_scaling_key and getattr(model.config, layout.inverse_layer_idx_scaling_key, False)
        for new_index, (old_index, block) in enumerate(zip(kept, survivors)):
            if inverse_scaling and new_index != old_index:
                _keep_inverse_layer_scaling(block, layout, old_index, new_index)
            for module in block.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = new_index
        setattr(parent, path.rsplit(".", 1)[-1], survivors)


def _keep_inverse_layer_scaling(block: nn.Module, layout: FamilyLayout, old_index: int, new_index: int) -> None:
    """GPT-2 divides the attention scores of block l by (l + 1): moving a block from slot ``old_index`` to
    ``new_index`` would change them, so its queries are scaled by (new + 1) / (old + 1) to compensate."""
    qkv = submodule(block, layout.attention.qkv)
    hidden = weight_matrix(qkv).shape[0] // 3
    factor = (new_index + 1) / (old_index + 1)
    matrix = weight_matrix(qkv).clone()
    matrix[:hidden] *= factor
    keep_inputs(qkv, list(range(matrix.shape[1])), matrix)
    if qkv.bias is not None:
        qkv.bias.data[:hidden] *= factor
    attention = submodule(block, layout.attention.output.rsplit(".", 1)[0])
    if isinstance(getattr(attention, "scaling", None), float):
        attention.scaling = attention.scaling * (old_index + 1) / (new_index + 1)


BLOCKS = WholeBlocks()
