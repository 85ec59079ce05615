"""MLP intermediate channels: a row of every producer (each piece of a fused one) and a column of the consumer.

Widths move in multiples of ``multiple_of`` and fill the share of the ratio the other units leave.
"""
from __future__ import annotations

import torch
from torch import nn

from ...anatomy import weight_matrix
from ...errors import LLMPruneError
from ..layouts import FamilyLayout
from ..scores import InputStatistics
from ..surgery import keep_outputs, narrow_consumer, rows_params, submodule
from .base import Choice, Groups, Shape, UnitCosts, WidthUnit


def remove_mlp_channels(block: nn.Module, layout: FamilyLayout, keep: list[int], stats: InputStatistics | None,
                        damp: float = 0.01) -> None:
    """Keep MLP channels ``keep``: rows of every producer (each piece of a fused one), columns of the consumer."""
    for name, pieces in layout.mlp_producers:
        producer = submodule(block, name)
        width = weight_matrix(producer).shape[0] // pieces
        submodule_rows = [piece * width + j for piece in range(pieces) for j in keep]
        keep_outputs(producer, submodule_rows)
    narrow_consumer(submodule(block, layout.mlp_consumer), keep, stats, damp)
    mlp = submodule(block, layout.mlp_consumer.rsplit(".", 1)[0]) if "." in layout.mlp_consumer else block
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = len(keep)


class MLPChannels(WidthUnit):
    name = "mlp"
    order = 2
    fills = True

    def costs(self, blocks: nn.ModuleList, layout: FamilyLayout) -> dict[str, int]:
        if layout.mlp_consumer is None:
            return {"intermediate": 0, "channel_params": 0}
        block = blocks[0]
        consumer = weight_matrix(submodule(block, layout.mlp_consumer))
        channel = consumer.shape[0] + sum(pieces * rows_params(submodule(block, name)) for name, pieces in layout.mlp_producers)
        return {"intermediate": consumer.shape[1], "channel_params": channel}

    def check(self, costs: UnitCosts, multiple_of: int, choices: list[Choice] | None) -> None:
        if multiple_of > costs.intermediate:
            raise LLMPruneError(f"--multiple-of {multiple_of} is wider than the MLP ({costs.intermediate} channels)")

    def fill(self, costs: UnitCosts, remaining: float, kept: int, multiple_of: int) -> Choice | str:
        per_block = remaining / (kept * costs.channel_params)
        intermediate = min(costs.intermediate, round((costs.intermediate - per_block) / multiple_of) * multiple_of)
        if intermediate < multiple_of:
            return f"the MLP would keep fewer than {multiple_of} of its {costs.intermediate} channels"
        return Choice({"intermediate": intermediate}, per_block=(costs.intermediate - intermediate) * costs.channel_params)

    def step(self, costs: UnitCosts, kept: int, multiple_of: int, choices: list[Choice]) -> int:
        return multiple_of * kept * costs.channel_params

    def config_edits(self, config, layout: FamilyLayout, shape: Shape) -> list[tuple[str, int]]:
        if layout.mlp_consumer is None or not layout.intermediate_key:
            return []
        return [(layout.intermediate_key, shape.intermediate)]

    def consumer(self, layout: FamilyLayout) -> str:
        return layout.mlp_consumer

    def changes(self, layout: FamilyLayout, shape: Shape, block: nn.Module) -> bool:
        return layout.mlp_consumer is not None and shape.intermediate != weight_matrix(submodule(block, layout.mlp_consumer)).shape[1]

    def groups(self, block: nn.Module, layout: FamilyLayout, shape: Shape) -> Groups:
        weight = weight_matrix(submodule(block, layout.mlp_consumer))
        width = weight.shape[1]
        producer_sq = torch.zeros(width, device=weight.device)
        for name, pieces in layout.mlp_producers:
            producer_sq += weight_matrix(submodule(block, name)).float().pow(2).sum(1).reshape(pieces, width).sum(0)
        return Groups([[j] for j in range(width)], width - shape.intermediate, producer_sq=producer_sq)

    def remove(self, block: nn.Module, layout: FamilyLayout, shape: Shape, removed: list[int], stats: InputStatistics | None,
               damp: float, record: dict) -> list[int]:
        gone = set(removed)
        keep = [j for j in range(weight_matrix(submodule(block, layout.mlp_consumer)).shape[1]) if j not in gone]
        remove_mlp_channels(block, layout, keep, stats, damp)
        record["mlp_channels_removed"] = removed
        return keep

    def narrow(self, block: nn.Module, layout: FamilyLayout, shape: Shape) -> None:
        if layout.mlp_consumer is not None:
            remove_mlp_channels(block, layout, list(range(shape.intermediate)), None)
