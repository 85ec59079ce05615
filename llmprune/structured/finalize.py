"""The shrunk config: the new sizes written with stock keys, so the saved folder loads with stock transformers.

``shrunk_config`` builds it (a copy; ``checks.py`` has transformers validate it before any work) and
``finalize_config`` writes the same keys into the model's own config once the blocks are shrunk.
"""
from __future__ import annotations

import copy

from torch import nn

from .layouts import FamilyLayout


def per_layer_keys(config, layers: int) -> list[str]:
    """Config entries holding one value per block (``layer_types``, sliding-window patterns, ...)."""
    keys = []
    for key, value in config.to_dict().items():
        if isinstance(value, (list, tuple)) and len(value) == layers and "layer" in key:
            keys.append(key)
    return keys


def _writable(config, key: str) -> bool:
    """Not a computed property of the config class (Falcon's head_dim is one)."""
    return not isinstance(getattr(type(config), key, None), property)


def shrunk_config(config, layout: FamilyLayout, intermediate: int, heads: int, kv_heads: int,
                  removed_blocks: list[int]):
    """(a copy of ``config`` with the shrunk sizes, key -> [before, after] for the report).

    The head size never changes, so when the query heads do, ``head_dim`` is written explicitly
    (hidden_size // heads no longer gives it), and ``num_key_value_heads`` (or the family's key) always
    holds the kept key/value heads."""
    config = copy.deepcopy(config)
    changes: dict[str, list] = {}

    def set_key(key: str, value) -> None:
        before = getattr(config, key, None)
        if before != value:
            changes[key] = [before, value]
            setattr(config, key, value)

    if layout.mlp_consumer is not None and layout.intermediate_key:
        current = getattr(config, layout.intermediate_key, None)
        if current is None or intermediate != current:
            set_key(layout.intermediate_key, intermediate)
    attention = layout.attention
    if attention is not None and (heads, kv_heads) != (attention.heads, attention.kv_heads):
        if _writable(config, layout.head_dim_key):
            set_key(layout.head_dim_key, attention.head_dim)
        set_key(layout.heads_key, heads)
        if layout.kv_heads_key:
            set_key(layout.kv_heads_key, kv_heads)
    if removed_blocks:
        layers = getattr(config, layout.layers_key)
        gone = set(removed_blocks)
        for key in per_layer_keys(config, layers):
            values = getattr(config, key)
            set_key(key, type(values)(value for index, value in enumerate(values) if index not in gone))
        set_key(layout.layers_key, layers - len(removed_blocks))
    return config, changes


def finalize_config(model: nn.Module, layout: FamilyLayout, intermediate: int, heads: int, kv_heads: int,
                    removed_blocks: list[int]) -> dict:
    """Write the shrunk sizes into ``model.config`` (the object its modules share); returns the changes."""
    _, changes = shrunk_config(model.config, layout, intermediate, heads, kv_heads, removed_blocks)
    for key, (_, after) in changes.items():
        setattr(model.config, key, after)
    return changes
