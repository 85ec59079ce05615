"""From a ratio and a unit mix to uniform widths that the family's config accepts, before any work.

Every surviving block keeps the same intermediate size and head counts, so the result is described
by a stock config. The ratio is a fraction of the decoder blocks' parameters (embeddings, lm_head
and the final norm are never touched). Each unit moves in its own steps (whole blocks; the same number
of query heads in every key/value group, or whole key/value groups; MLP widths in multiples of
``multiple_of``). Every combination of a block count and a head count is tried, the MLP taking up the
rest; among those within ``RATIO_TOLERANCE`` of the ratio, those that use every asked unit, then the
most even split win (blocks an equal share of the total, heads the ratio's fraction of the attention);
when none is that close, the nearest.

Head counts are those the family accepts: ``checks.py`` has transformers validate the config and build
the shrunk model on the meta device. When no head count is accepted, the heads' share moves to the
other units (one note says so); when nothing valid exists, one error before any work.

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
from .blocks import bridge_unavailable
from .checks import config_error, forward_error, plan_error
from .finalize import shrunk_config
from .layouts import FamilyLayout, find_layout
from .surgery import submodule

UNITS = ("mlp", "heads", "blocks")
ORDER = ("blocks", "heads", "mlp")
# The reached ratio should be within this of the asked one wherever the units' steps allow it.
RATIO_TOLERANCE = 0.02


@dataclass
class UnitCosts:
    """Parameters one unit of each kind holds in one block, and the model's sizes."""

    blocks: int
    block_params: int
    intermediate: int  # 0: no MLP unit
    channel_params: int
    heads: int  # 0: no attention unit
    kv_heads: int
    head_dim: int
    q_head_params: int  # a query head's q rows, o columns and norm channels
    kv_head_params: int  # a key/value head's k and v rows and norm channels


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
    step: float  # the ratio one step of the finest unit of the mix is worth
    notes: list[str] = field(default_factory=list)

    @property
    def reached(self) -> float:
        return self.removed_params / self.total_params


def _rows_params(layer: nn.Module) -> int:
    """Parameters one output unit of a layer holds: a row of weights plus its bias."""
    return weight_matrix(layer).shape[1] + (1 if layer.bias is not None else 0)


def _norm_params(norm: nn.Module) -> int:
    return sum(p.numel() for p in norm.parameters(recurse=False))


def unit_costs(model: nn.Module, layout: FamilyLayout) -> UnitCosts:
    _, blocks = find_blocks(model)
    sizes = {sum(p.numel() for p in block.parameters()) for block in blocks}
    if len(sizes) != 1:
        raise LLMPruneError("the decoder blocks differ in size; shrink needs uniform blocks (run it on an unpruned model)")
    block = blocks[0]
    intermediate = channel = 0
    if layout.mlp_consumer is not None:
        consumer = submodule(block, layout.mlp_consumer)
        intermediate = weight_matrix(consumer).shape[1]
        channel = weight_matrix(consumer).shape[0] + sum(pieces * _rows_params(submodule(block, name)) for name, pieces in layout.mlp_producers)
    attention = layout.attention
    if attention is None:
        return UnitCosts(len(blocks), sizes.pop(), intermediate, channel, 0, 0, 0, 0, 0)
    heads, kv_heads, head_dim = attention.sizes
    output = submodule(block, attention.output)
    q_layer = submodule(block, attention.qkv or attention.q)
    kv_layer = submodule(block, attention.qkv or attention.k)
    q_head = head_dim * (_rows_params(q_layer) + weight_matrix(output).shape[0])
    q_head += sum(_norm_params(submodule(block, name)) for name in attention.q_norms) // heads
    kv_head = 2 * head_dim * _rows_params(kv_layer)
    kv_head += sum(_norm_params(submodule(block, name)) for name in attention.kv_norms) // kv_heads
    return UnitCosts(len(blocks), sizes.pop(), intermediate, channel, heads, kv_heads, head_dim, q_head, kv_head)


def head_options(costs: UnitCosts) -> list[tuple[int, int, int]]:
    """(kept query heads, kept kv heads, parameters removed per block): fewer query heads in every
    group, or fewer whole groups; never the whole attention."""
    if not costs.heads:
        return []
    per_group = costs.heads // costs.kv_heads
    options = []
    for kept_per_group in range(1, per_group):
        options.append((kept_per_group * costs.kv_heads, costs.kv_heads,
                        (costs.heads - kept_per_group * costs.kv_heads) * costs.q_head_params))
    for kept_groups in range(1, costs.kv_heads):
        options.append((kept_groups * per_group, kept_groups,
                        (costs.kv_heads - kept_groups) * (per_group * costs.q_head_params + costs.kv_head_params)))
    return options


def make_plan(costs: UnitCosts, ratio: float, units: tuple[str, ...], multiple_of: int,
              options: list[tuple[int, int, int]] | None = None) -> ShrinkPlan:
    """The widths for ``ratio`` with ``units`` (pure arithmetic); ``options``: the accepted head counts
    (default: every whole-group count, see ``head_options``)."""
    if not 0 < ratio < 1:
        raise LLMPruneError(f"ratio must be in (0, 1), got {ratio}")
    unknown = [unit for unit in units if unit not in UNITS]
    if unknown or not units:
        raise LLMPruneError(f"unknown unit '{(unknown or [''])[0]}' (use a comma-separated mix of {', '.join(UNITS)})")
    if multiple_of < 1:
        raise LLMPruneError(f"--multiple-of must be a positive integer, got {multiple_of}")
    ordered = tuple(unit for unit in ORDER if unit in units)
    options = head_options(costs) if options is None else options
    if "heads" in ordered and not options:
        raise LLMPruneError("no head count can be removed from this model's attention")
    if "mlp" in ordered and multiple_of > costs.intermediate:
        raise LLMPruneError(f"--multiple-of {multiple_of} is wider than the MLP ({costs.intermediate} channels)")
    total = costs.blocks * costs.block_params
    target = ratio * total
    attention_params = costs.heads * costs.q_head_params + costs.kv_heads * costs.kv_head_params
    unchanged = (costs.heads, costs.kv_heads, 0)
    best, best_key, reason = None, None, None
    for blocks_removed in (range(costs.blocks) if "blocks" in ordered else (0,)):
        kept = costs.blocks - blocks_removed
        for heads, kv_heads, cost in ([unchanged, *options] if "heads" in ordered else [unchanged]):
            removed = blocks_removed * costs.block_params + kept * cost
            intermediate = costs.intermediate
            if "mlp" in ordered:
                per_block = (target - removed) / (kept * costs.channel_params)
                intermediate = min(costs.intermediate, round((costs.intermediate - per_block) / multiple_of) * multiple_of)
                if intermediate < multiple_of:
                    reason = f"the MLP would keep fewer than {multiple_of} of its {costs.intermediate} channels"
                    continue
                removed += kept * (costs.intermediate - intermediate) * costs.channel_params
            if removed <= 0:
                continue
            error = abs(removed / total - ratio)
            imbalance = 0.0
            if "blocks" in ordered:
                imbalance += abs(blocks_removed * costs.block_params - target / len(ordered))
            if "heads" in ordered:  # not last: attention loses the ratio's fraction of its own parameters
                share = ratio * attention_params * kept if "mlp" in ordered else target - blocks_removed * costs.block_params
                imbalance += abs(kept * cost - share)
            idle = (("blocks" in ordered and not blocks_removed) + ("heads" in ordered and not cost)
                    + ("mlp" in ordered and intermediate == costs.intermediate))
            key = (error > RATIO_TOLERANCE, error if error > RATIO_TOLERANCE else 0.0, idle, imbalance, error)
            if best_key is None or key < best_key:
                best_key = key
                best = (blocks_removed, intermediate, heads, kv_heads, removed)
    if best is None:
        raise LLMPruneError(f"ratio {ratio} cannot be reached with units {','.join(ordered)}: "
                            f"{reason or 'nothing would be removed'} (lower the ratio or add units: --units mlp,heads,blocks)")
    blocks_removed, intermediate, heads, kv_heads, removed = best
    kept = costs.blocks - blocks_removed
    steps = []
    if "blocks" in ordered:
        steps.append(costs.block_params / total)
    if "heads" in ordered:
        steps.append(min(option[2] for option in options) * kept / total)
    if "mlp" in ordered:
        steps.append(multiple_of * kept * costs.channel_params / total)
    plan = ShrinkPlan(ratio, ordered, blocks_removed, intermediate, heads, kv_heads, removed, total, min(steps))
    if abs(plan.reached - ratio) > max(plan.step, RATIO_TOLERANCE) + 1e-9:
        raise LLMPruneError(
            f"ratio {ratio} cannot be reached with units {','.join(ordered)}: the nearest is {plan.reached:.3f} "
            f"(one step is {plan.step:.3f}; try other --units or a finer --multiple-of)"
        )
    if abs(plan.reached - ratio) > RATIO_TOLERANCE:
        plan.notes.append(f"warning: ratio {ratio} asked, {plan.reached:.3f} reached: units {','.join(ordered)} move in "
                          f"steps of {plan.step:.3f} of the blocks' parameters here")
    return plan


def parse_units(units) -> tuple[str, ...] | None:
    """The unit mix as a tuple, or None for ``auto`` (resolved per model by ``plan_shrink``)."""
    if units == "auto":
        return None
    if isinstance(units, str):
        units = [part.strip() for part in units.split(",") if part.strip()]
    units = tuple(units)
    for unit in units:
        if unit not in UNITS:
            raise LLMPruneError(f"unknown unit '{unit}' (use a comma-separated mix of {', '.join(UNITS)})")
    if not units:
        raise LLMPruneError(f"no units given (use a comma-separated mix of {', '.join(UNITS)})")
    return units


def accepted_head_options(model: nn.Module, layout: FamilyLayout, costs: UnitCosts) -> tuple[list[tuple[int, int, int]], str | None]:
    """The head counts transformers accepts for this model (config class, then a meta-device model of the
    shrunk config holding the shrunk tensors), and why there are none when there are none."""
    if layout.attention is None:
        return [], layout.attention_missing
    options = head_options(costs)
    if not options:
        return [], "it has a single attention head"
    accepted, reason = [], None
    for option in options:
        config, _ = shrunk_config(model.config, layout, costs.intermediate, option[0], option[1], [])
        error = config_error(config)
        if error is None:
            accepted.append(option)
        else:
            reason = reason or error
    if not accepted:
        return [], f"its config accepts no smaller head count ({reason})"
    # One meta model tells whether the family's attention honours the head size at all (GPT-2, OPT,
    # GPT-NeoX, Falcon and StableLM derive it from hidden_size // heads); the final plan is checked again.
    heads, kv_heads, _ = max(accepted)
    error = plan_error(model, layout, costs.intermediate, heads, kv_heads, 0)
    if error is not None:
        head_dim = costs.head_dim
        return [], f"a model built with {heads} heads does not hold {heads} heads of size {head_dim} ({error})"
    return accepted, None


def plan_shrink(model: nn.Module, ratio: float, units, multiple_of: int) -> tuple[FamilyLayout, UnitCosts, ShrinkPlan]:
    """Layout, unit costs and the plan for ``model``, validated by transformers; raises before any work."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    failure = forward_error(model)
    if failure is not None:
        raise LLMPruneError(f"the model (type '{model_type}') fails a forward pass before anything is removed: {failure}")
    layout = find_layout(model)
    costs = unit_costs(model, layout)
    asked = parse_units(units)
    notes: list[str] = []
    options, heads_reason = ([], None)
    if asked is None or "heads" in asked:
        options, heads_reason = accepted_head_options(model, layout, costs)
    if asked is None:  # auto
        if layout.mlp_consumer is None:
            chosen = ("heads", "blocks") if options else ("blocks",)
            notes.append(f"note: model type '{model_type}': {layout.mlp_missing}; units {','.join(chosen)}")
        elif bridge_unavailable(layout) is None:
            chosen = ("mlp", "blocks")
        else:
            chosen = ("mlp", "heads") if options else ("mlp",)
    else:
        chosen = asked
        if "mlp" in chosen and layout.mlp_consumer is None:
            supported = ",".join(u for u in ("heads", "blocks") if u != "heads" or layout.attention is not None)
            raise LLMPruneError(f"the MLP of model type '{model_type}' cannot be shrunk: {layout.mlp_missing} "
                                f"(use --units {supported})")
        if "heads" in chosen and not options:
            if chosen == ("heads",):
                raise LLMPruneError(f"heads cannot be removed from model type '{model_type}': {heads_reason} "
                                    "(use --units mlp,blocks)")
            chosen = tuple(unit for unit in chosen if unit != "heads")
            notes.append(f"note: heads cannot be removed from model type '{model_type}': {heads_reason}; "
                         f"their share of the ratio goes to {','.join(chosen)}")
    while True:
        plan = make_plan(costs, ratio, chosen, multiple_of, options)
        error = plan_error(model, layout, plan.intermediate, plan.heads, plan.kv_heads, plan.blocks_removed)
        heads_changed = (plan.heads, plan.kv_heads) != (costs.heads, costs.kv_heads)
        if error is None or not heads_changed:
            break
        options = [option for option in options if option[:2] != (plan.heads, plan.kv_heads)]  # try the next count
        if not options:
            break
    if error is not None:
        raise LLMPruneError(f"transformers refuses the shrunk config of model type '{model_type}': {error}")
    plan.notes[:0] = notes
    return layout, costs, plan
