"""The shrunk config: the new sizes written with stock keys, so the saved folder loads with stock transformers.

``shrunk_config`` builds it (a copy; ``checks.py`` has transformers validate it before any work) and
``finalize_config`` writes the same keys into the model's own config once the blocks are shrunk. Which
keys each kind of unit writes is the unit's ``config_edits`` (``units/``).
"""
from __future__ import annotations

from torch import nn

from .layouts import FamilyLayout
from .units import UNITS, Shape
from .units.base import edited_config


def shrunk_config(config, layout: FamilyLayout, intermediate: int, heads: int, kv_heads: int,
                  removed_blocks: list[int]):
    """(a copy of ``config`` with the shrunk sizes, key -> [before, after] for the report)."""
    shape = Shape(intermediate, heads, kv_heads, tuple(removed_blocks))
    edits = [edit for unit in UNITS.values() for edit in unit.config_edits(config, layout, shape)]
    return edited_config(config, edits)


def finalize_config(model: nn.Module, layout: FamilyLayout, intermediate: int, heads: int, kv_heads: int,
                    removed_blocks: list[int]) -> dict:
    """Write the shrunk sizes into ``model.config`` (the object its modules share); returns the changes."""
    _, changes = shrunk_config(model.config, layout, intermediate, heads, kv_heads, removed_blocks)
    for key, (_, after) in changes.items():
        setattr(model.config, key, after)
    return changes
