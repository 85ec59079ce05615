"""From a ratio and a unit mix to uniform widths: how many blocks, heads and MLP channels go.

Every surviving block keeps the same intermediate size and head counts, so the result is described
by a stock config. The ratio is a fraction of the decoder blocks' parameters (embeddings, lm_head
and the final norm are never touched). The units of a mix share the removal equally, each rounded
to its own step (whole blocks; the same number of query heads in every key/value group, or whole
key/value groups; MLP widths in multiples of ``multiple_of``); the last unit of the order blocks ->
heads -> mlp takes up whatever the earlier roundings left. Blocks take an equal share of the total;
heads, when not last, the same fraction of the attention's parameters as the ratio asks of the whole.

``multiple_of``: llama.cpp's k-quants need every matrix row length to be a multiple of 256, and
wide matmuls run at full speed on multiples of 64 or more; a small model with an intermediate size
of 1536 can only lose 256-channel steps (17% of its MLP at a time), so a finer step lets the ratio
be hit closely at the price of widths that quantise less well.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import LLMPruneError
from ..anatomy import find_blocks, weight_matrix
from .layouts import FamilyLayout, attention_sizes
from .surgery import submodule

UNITS = ("mlp", "heads", "blocks")
ORDER = ("blocks", "heads", "mlp")


@dataclass
class UnitCosts:
    """Parameters one unit of each kind holds in one block, and the model's sizes."""

    blocks: int
    block_params: int
    intermediate: int
    channel_params: int
    heads: int
    kv_heads: int
    head_dim: int
    q_head_params: int  # a query head's q rows and o columns
    kv_head_params: int  # a key/value head's k and v rows


@dataclass
class ShrinkPlan:
    ratio: float
    units: tuple[str, ...]
    blocks_removed: int
    intermediate: int  # kept MLP width per block
    heads: int  # kept query heads per block
    kv_heads: int  # kept key/value heads per block
    removed_params: int
    total_params: int
    step: float  # the ratio one rounding step of the finishing unit is worth
    notes: list[str] = field(default_factory=list)

    @property
    def reached(self) -> float:
        return self.removed_params / self.total_params


def _rows_params(layer: nn.Module) -> int:
    """Parameters one output unit of a layer holds: a row of weights plus its bias."""
    return weight_matrix(layer).shape[1] + (1 if layer.bias is not None else 0)


def unit_costs(model: nn.Module, layout: FamilyLayout) -> UnitCosts:
    _, blocks = find_blocks(model)
    sizes = {sum(p.numel() for p in block.parameters()) for block in blocks}
    if len(sizes) != 1:
        raise LLMPruneError("the decoder blocks differ in size; shrink needs uniform blocks (run it on an unpruned model)")
    block = blocks[0]
    consumer = submodule(block, layout.mlp_consumer)
    intermediate = weight_matrix(consumer).shape[1]
    channel = weight_matrix(consumer).shape[0] + sum(pieces * _rows_params(submodule(block, name)) for name, pieces in layout.mlp_producers)
    heads, kv_heads, head_dim = attention_sizes(model.config)
    attention = layout.attention
    output = submodule(block, attention.output)
    q_layer = submodule(block, attention.qkv or attention.q)
    kv_layer = submodule(block, attention.qkv or attention.k)
    q_head = head_dim * (_rows_params(q_layer) + weight_matrix(output).shape[0])
    kv_head = 2 * head_dim * _rows_params(kv_layer)
    return UnitCosts(len(blocks), sizes.pop(), intermediate, channel, heads, kv_heads, head_dim, q_head, kv_head)


def _head_options(costs: UnitCosts) -> list[tuple[int, int, int]]:
    """(kept query heads, kept kv heads, parameters removed per block): fewer query heads in every
    group, or fewer whole groups; never the whole attention."""
    per_group = costs.heads // costs.kv_heads
    options = []
    for kept_per_group in range(1, per_group):
        options.append((kept_per_group * costs.kv_heads, costs.kv_heads,
                        (costs.heads - kept_per_group * costs.kv_heads) * costs.q_head_params))
    for kept_groups in range(1, costs.kv_heads):
        options.append((kept_groups * per_group, kept_groups,
                        (costs.kv_heads - kept_groups) * (per_group * costs.q_head_params + costs.kv_head_params)))
    return options


def make_plan(costs: UnitCosts, ratio: float, units: tuple[str, ...], multiple_of: int) -> ShrinkPlan:
    if not 0 < ratio < 1:
        raise LLMPruneError(f"ratio must be in (0, 1), got {ratio}")
    unknown = [unit for unit in units if unit not in UNITS]
    if unknown or not units:
        raise LLMPruneError(f"unknown unit '{(unknown or [''])[0]}' (use a comma-separated mix of {', '.join(UNITS)})")
    if multiple_of < 1:
        raise LLMPruneError(f"--multiple-of must be a positive integer, got {multiple_of}")
    ordered = [unit for unit in ORDER if unit in units]
    total = costs.blocks * costs.block_params
    target = ratio * total
    share = target / len(ordered)
    removed, step = 0, 0.0
    blocks_removed, heads, kv_heads, intermediate = 0, costs.heads, costs.kv_heads, costs.intermediate
    for position, unit in enumerate(ordered):
        last = position == len(ordered) - 1
        wanted = (target - removed) if last else share
        kept_blocks = costs.blocks - blocks_removed
        if unit == "blocks":
            blocks_removed = min(costs.blocks - 1, max(0, round(wanted / costs.block_params)))
            removed += blocks_removed * costs.block_params
            step = costs.block_params / total
        elif unit == "heads":
            options = _head_options(costs)
            if not options:
                raise LLMPruneError("this model has a single attention head: no heads can be removed")
            # Not last: attention loses the same fraction of its own parameters as asked of the whole
            # (an equal share of the total would strip two thirds of a small model's query heads).
            attention_params = costs.heads * costs.q_head_params + costs.kv_heads * costs.kv_head_params
            per_block = wanted / kept_blocks if last else ratio * attention_params
            heads, kv_heads, cost = min(options, key=lambda option: abs(option[2] - per_block))
            removed += kept_blocks * cost
            step = min(option[2] for option in options) * kept_blocks / total
        else:
            if multiple_of > costs.intermediate:
                raise LLMPruneError(f"--multiple-of {multiple_of} is wider than the MLP ({costs.intermediate} channels)")
            per_block = wanted / (kept_blocks * costs.channel_params)
            intermediate = round((costs.intermediate - per_block) / multiple_of) * multiple_of
            intermediate = min(intermediate, costs.intermediate)
            if intermediate < multiple_of:
                raise LLMPruneError(
                    f"ratio {ratio} cannot be reached: the MLP would keep fewer than {multiple_of} of its "
                    f"{costs.intermediate} channels (lower the ratio or add units: --units mlp,heads,blocks)"
                )
            removed += kept_blocks * (costs.intermediate - intermediate) * costs.channel_params
            step = multiple_of * kept_blocks * costs.channel_params / total
    plan = ShrinkPlan(ratio, tuple(ordered), blocks_removed, intermediate, heads, kv_heads, removed, total, step)
    if abs(plan.reached - ratio) > step + 1e-9:
        raise LLMPruneError(
            f"ratio {ratio} cannot be reached with units {','.join(ordered)}: the nearest is {plan.reached:.3f} "
            f"(one step is {step:.3f}; try other --units or a finer --multiple-of)"
        )
    return plan
