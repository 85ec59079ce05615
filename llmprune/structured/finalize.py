"""The config edits at the end of a shrink, so the saved folder describes the new sizes with stock keys."""
from __future__ import annotations

from torch import nn

from .layouts import FamilyLayout, attention_sizes
from .plan import ShrinkPlan


def per_layer_keys(config, layers: int) -> list[str]:
    """Config entries holding one value per block (``layer_types``, sliding-window patterns, ...)."""
    keys = []
    for key, value in config.to_dict().items():
        if isinstance(value, (list, tuple)) and len(value) == layers and "layer" in key:
            keys.append(key)
    return keys


def finalize_config(model: nn.Module, layout: FamilyLayout, plan: ShrinkPlan, removed_blocks: list[int]) -> dict:
    """Write the shrunk sizes into ``model.config``; returns key -> (before, after) for the report."""
    config = model.config
    changes: dict[str, list] = {}

    def set_key(key: str, value) -> None:
        before = getattr(config, key, None)
        if before != value:
            changes[key] = [before, value]
            setattr(config, key, value)

    heads, kv_heads, head_dim = attention_sizes(config)
    if "mlp" in plan.units:
        set_key(layout.intermediate_key, plan.intermediate)
    if "heads" in plan.units:
        set_key(layout.head_dim_key, head_dim)  # explicit: hidden_size // heads no longer gives it
        set_key(layout.heads_key, plan.heads)
        if layout.kv_heads_key:
            set_key(layout.kv_heads_key, plan.kv_heads)
    if removed_blocks:
        layers = getattr(config, layout.layers_key)
        gone = set(removed_blocks)
        for key in per_layer_keys(config, layers):
            values = getattr(config, key)
            set_key(key, type(values)(value for index, value in enumerate(values) if index not in gone))
        set_key(layout.layers_key, layers - len(removed_blocks))
    return changes
