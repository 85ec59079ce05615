"""From a ratio and a unit mix to uniform widths that the family's config accepts, before any work.

Every surviving block keeps the same intermediate size and head counts, so the result is described
by a stock config. The ratio is a fraction of the decoder blocks' parameters (embeddings, lm_head
and the final norm are never touched). Each unit moves in its own steps (whole blocks; the same number
of query heads in every key/value group, or whole key/value groups; MLP widths in multiples of
``multiple_of``). Every combination of a block count and a head count is tried, the MLP taking up the
rest; among those within ``RATIO_TOLERANCE`` of the ratio, those that use every asked unit, then the
most even split win (blocks an equal share of the total, heads the ratio's fraction of the attention);
when none is that close, the nearest.

Each unit's own arithmetic (its costs, its settings or its fill, its share, its step) is in
``units/``; this module weighs the combinations of the units of a mix and picks one. The ``auto`` mix
and what happens when a family refuses a unit (``_resolve_units``) are the policy kept here.

Head counts are those the family accepts: ``checks.py`` has transformers validate the config and build
the shrunk model on the meta device. When no head count is accepted, the heads' share moves to the
other units (one note says so); when nothing valid exists, one error before any work.

``multiple_of``: llama.cpp's k-quants need every matrix row length to be a multiple of 256, and
wide matmuls run at full speed on multiples of 64 or more; a small model with an intermediate size
of 1536 can only lose 256-channel steps (17% of its MLP at a time), so a finer step lets the ratio
be hit closely at the price of widths that quantise less well.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from torch import nn

from ..errors import LLMPruneError
from ..anatomy import find_blocks
from .blocks import bridge_unavailable
from .checks import config_error, forward_error, plan_error
from .finalize import shrunk_config
from .layouts import FamilyLayout, find_layout
from .units import HEADS, UNITS, Choice, PlanContext, Shape, UnitCosts, in_plan_order

# The reached ratio should be within this of the asked one wherever the units' steps allow it.
RATIO_TOLERANCE = 0.02


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

    @property
    def shape(self) -> Shape:
        """The kept widths of every surviving block (what the width units are shrunk to)."""
        return Shape(self.intermediate, self.heads, self.kv_heads)


def unit_costs(model: nn.Module, layout: FamilyLayout) -> UnitCosts:
    _, blocks = find_blocks(model)
    sizes: dict[str, int] = {}
    for name in in_plan_order(UNITS):  # whole blocks first: they check that the blocks are uniform
        sizes.update(UNITS[name].costs(blocks, layout))
    return UnitCosts(**sizes)


def _checked_mix(ratio: float, units: tuple[str, ...], multiple_of: int) -> tuple[str, ...]:
    if not 0 < ratio < 1:
        raise LLMPruneError(f"ratio must be in (0, 1), got {ratio}")
    unknown = [unit for unit in units if unit not in UNITS]
    if unknown or not units:
        raise LLMPruneError(f"unknown unit '{(unknown or [''])[0]}' (use a comma-separated mix of {', '.join(UNITS)})")
    if multiple_of < 1:
        raise LLMPruneError(f"--multiple-of must be a positive integer, got {multiple_of}")
    return in_plan_order(units)


@dataclass
class _Candidate:
    picked: dict[str, Choice]  # unit name -> its setting
    removed: int
    kept: int


def _candidates(costs: UnitCosts, ratio: float, ordered: tuple[str, ...], settings: dict[str, list[Choice]],
                multiple_of: int):
    """Every combination of the stepping units' settings, the filling unit taking the rest; yields
    (candidate, None) or (None, why the filling unit found no width)."""
    stepping = [name for name in ordered if not UNITS[name].fills]
    fill = next((UNITS[name] for name in ordered if UNITS[name].fills), None)
    target = ratio * costs.blocks * costs.block_params
    for combo in itertools.product(*(settings[name] for name in stepping)):
        picked = dict(zip(stepping, combo))
        kept = costs.blocks - sum(choice.blocks for choice in combo)
        removed = sum(choice.blocks for choice in combo) * costs.block_params + kept * sum(choice.per_block for choice in combo)
        if fill is not None:
            filled = fill.fill(costs, target - removed, kept, multiple_of)
            if isinstance(filled, str):
                yield None, filled
                continue
            picked[fill.name] = filled
            removed += kept * filled.per_block
        if removed > 0:
            yield _Candidate(picked, removed, kept), None


def _rank(candidate: _Candidate, costs: UnitCosts, ratio: float, ordered: tuple[str, ...]) -> tuple:
    """Within ``RATIO_TOLERANCE`` of the ratio first, then every asked unit used, then the most even split."""
    total = costs.blocks * costs.block_params
    error = abs(candidate.removed / total - ratio)
    has_fill = any(UNITS[name].fills for name in ordered)
    imbalance, before = 0.0, 0
    for name in ordered:
        choice = candidate.picked[name]
        context = PlanContext(ratio, ratio * total, ordered, candidate.kept, before, has_fill)
        imbalance += UNITS[name].imbalance(choice, costs, context)
        before += choice.blocks * costs.block_params + candidate.kept * choice.per_block
    idle = sum(candidate.picked[name].idle for name in ordered)
    return error > RATIO_TOLERANCE, error if error > RATIO_TOLERANCE else 0.0, idle, imbalance, error


def make_plan(costs: UnitCosts, ratio: float, units: tuple[str, ...], multiple_of: int,
              accepted: dict[str, list[Choice]] | None = None) -> ShrinkPlan:
    """The widths for ``ratio`` with ``units`` (pure arithmetic); ``accepted``: unit name -> the settings the
    family accepts (default: every setting the unit offers, e.g. every whole-group head count)."""
    ordered = _checked_mix(ratio, units, multiple_of)
    settings = {name: UNITS[name].choices(costs, (accepted or {}).get(name)) for name in ordered if not UNITS[name].fills}
    movable = {name: [choice for choice in settings.get(name, []) if not choice.idle] for name in ordered}
    for name in ordered:
        UNITS[name].check(costs, multiple_of, movable[name])
    best, best_key, reason = None, None, None
    for candidate, why in _candidates(costs, ratio, ordered, settings, multiple_of):
        reason = why or reason
        key = None if candidate is None else _rank(candidate, costs, ratio, ordered)
        if key is not None and (best_key is None or key < best_key):
            best, best_key = candidate, key
    if best is None:
        raise LLMPruneError(f"ratio {ratio} cannot be reached with units {','.join(ordered)}: "
                            f"{reason or 'nothing would be removed'} (lower the ratio or add units: --units mlp,heads,blocks)")
    total = costs.blocks * costs.block_params
    step = min(UNITS[name].step(costs, best.kept, multiple_of, movable[name]) / total for name in ordered)
    return _checked_plan(_plan_of(best, costs, ratio, ordered, step))


def _plan_of(best: _Candidate, costs: UnitCosts, ratio: float, ordered: tuple[str, ...], step: float) -> ShrinkPlan:
    sizes = {"intermediate": costs.intermediate, "heads": costs.heads, "kv_heads": costs.kv_heads}
    for choice in best.picked.values():
        sizes.update(choice.sizes)
    blocks_removed = sum(choice.blocks for choice in best.picked.values())
    return ShrinkPlan(ratio, ordered, blocks_removed, sizes["intermediate"], sizes["heads"], sizes["kv_heads"], best.removed,
                      costs.blocks * costs.block_params, step)


def _checked_plan(plan: ShrinkPlan) -> ShrinkPlan:
    """Refuse a plan further than one step from the ratio; note one further than the tolerance."""
    ratio, mix = plan.ratio, ",".join(plan.units)
    if abs(plan.reached - ratio) > max(plan.step, RATIO_TOLERANCE) + 1e-9:
        raise LLMPruneError(
            f"ratio {ratio} cannot be reached with units {mix}: the nearest is {plan.reached:.3f} "
            f"(one step is {plan.step:.3f}; try other --units or a finer --multiple-of)"
        )
    if abs(plan.reached - ratio) > RATIO_TOLERANCE:
        plan.notes.append(f"warning: ratio {ratio} asked, {plan.reached:.3f} reached: units {mix} move in "
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


def accepted_head_choices(model: nn.Module, layout: FamilyLayout, costs: UnitCosts) -> tuple[list[Choice], str | None]:
    """The head counts transformers accepts for this model, and why there are none when there are none."""
    def config_refusal(shape: Shape) -> str | None:
        config, _ = shrunk_config(model.config, layout, shape.intermediate, shape.heads, shape.kv_heads, [])
        return config_error(config)

    def model_refusal(shape: Shape) -> str | None:
        return plan_error(model, layout, shape.intermediate, shape.heads, shape.kv_heads, 0)

    return HEADS.accepted(costs, layout, config_refusal, model_refusal)


def _resolve_units(asked: tuple[str, ...] | None, layout: FamilyLayout, head_choices: list[Choice],
                   heads_reason: str | None, model_type: str) -> tuple[tuple[str, ...], list[str]]:
    """The mix for this model (``auto`` resolved, heads dropped with a note where the family takes none)."""
    notes: list[str] = []
    if asked is None:  # auto
        if layout.mlp_consumer is None:
            chosen = ("heads", "blocks") if head_choices else ("blocks",)
            notes.append(f"note: model type '{model_type}': {layout.mlp_missing}; units {','.join(chosen)}")
        elif bridge_unavailable(layout) is None:
            chosen = ("mlp", "blocks")
        else:
            chosen = ("mlp", "heads") if head_choices else ("mlp",)
        return chosen, notes
    chosen = asked
    if "mlp" in chosen and layout.mlp_consumer is None:
        supported = ",".join(u for u in ("heads", "blocks") if u != "heads" or layout.attention is not None)
        raise LLMPruneError(f"the MLP of model type '{model_type}' cannot be shrunk: {layout.mlp_missing} "
                            f"(use --units {supported})")
    if "heads" in chosen and not head_choices:
        if chosen == ("heads",):
            raise LLMPruneError(f"heads cannot be removed from model type '{model_type}': {heads_reason} "
                                "(use --units mlp,blocks)")
        chosen = tuple(unit for unit in chosen if unit != "heads")
        notes.append(f"note: heads cannot be removed from model type '{model_type}': {heads_reason}; "
                     f"their share of the ratio goes to {','.join(chosen)}")
    return chosen, notes


def _accepted_plan(model: nn.Module, layout: FamilyLayout, costs: UnitCosts, ratio: float, chosen: tuple[str, ...],
                   multiple_of: int, head_choices: list[Choice], model_type: str) -> ShrinkPlan:
    """The plan, with the next head count tried while transformers refuses the shrunk model."""
    while True:
        plan = make_plan(costs, ratio, chosen, multiple_of, {HEADS.name: head_choices})
        error = plan_error(model, layout, plan.intermediate, plan.heads, plan.kv_heads, plan.blocks_removed)
        heads_changed = (plan.heads, plan.kv_heads) != (costs.heads, costs.kv_heads)
        if error is None or not heads_changed:
            break
        refused = {"heads": plan.heads, "kv_heads": plan.kv_heads}
        head_choices = [choice for choice in head_choices if choice.sizes != refused]  # try the next count
        if not head_choices:
            break
    if error is not None:
        raise LLMPruneError(f"transformers refuses the shrunk config of model type '{model_type}': {error}")
    return plan


def plan_shrink(model: nn.Module, ratio: float, units, multiple_of: int) -> tuple[FamilyLayout, UnitCosts, ShrinkPlan]:
    """Layout, unit costs and the plan for ``model``, validated by transformers; raises before any work."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    failure = forward_error(model)
    if failure is not None:
        raise LLMPruneError(f"the model (type '{model_type}') fails a forward pass before anything is removed: {failure}")
    layout = find_layout(model)
    costs = unit_costs(model, layout)
    asked = parse_units(units)
    head_choices, heads_reason = ([], None)
    if asked is None or "heads" in asked:
        head_choices, heads_reason = accepted_head_choices(model, layout, costs)
    chosen, notes = _resolve_units(asked, layout, head_choices, heads_reason, model_type)
    plan = _accepted_plan(model, layout, costs, ratio, chosen, multiple_of, head_choices, model_type)
    plan.notes[:0] = notes
    return layout, costs, plan
