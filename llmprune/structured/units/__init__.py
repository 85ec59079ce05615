"""The kinds of unit ``shrink`` removes, one per module, behind the interface in ``base``.

Add a unit by adding a file (a ``Unit`` or ``WidthUnit`` subclass) and a line here; the plan, the
options (``--units``) and the block loop read the names from ``UNITS``.
"""
from __future__ import annotations

from .base import Choice, Groups, PlanContext, Shape, Unit, UnitCosts, WidthUnit
from .blocks import BLOCKS, BlockRanking, WholeBlocks
from .heads import HEADS, AttentionHeads
from .mlp import MLPChannels

# Name -> unit, in the order config edits are written (and ``--units`` lists them).
UNITS: dict[str, Unit] = {}


def register(unit: Unit) -> Unit:
    """Make ``unit`` known by its name to the plan, the options and the block loop."""
    UNITS[unit.name] = unit
    return unit


for _unit in (MLPChannels(), HEADS, BLOCKS):
    register(_unit)


def in_plan_order(names) -> tuple[str, ...]:
    """``names`` as the plan weighs them: whole blocks first, then attention, the filling unit last."""
    return tuple(sorted(set(names), key=lambda name: (UNITS[name].order, name)))


__all__ = ["BLOCKS", "HEADS", "UNITS", "AttentionHeads", "BlockRanking", "Choice", "Groups", "MLPChannels", "PlanContext",
           "Shape", "Unit", "UnitCosts", "WholeBlocks", "WidthUnit", "in_plan_order", "register"]
