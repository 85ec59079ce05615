"""Transformers' own conversion between a checkpoint's tensors and the model's, one tensor at a time.

transformers 5 fuses some checkpoint weights on load (MoE experts: one 2-D weight per expert becomes
one 3-D parameter per block) and splits them back on save. Streaming reads and writes a block at a
time and the sparse writer stores what ``save_pretrained`` stores, so both apply the same conversion
to the tensors at hand instead of the whole state dict.
"""
from __future__ import annotations

import torch
from torch import nn


def saved_state(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What ``save_pretrained`` writes for these tensors of the model (transformers' conversion on save).

    A model loaded from a folder whose tensors matched none of its family's conversions (a sparse
    folder: its compressed parts) records an empty list of them, and saving would keep the fused
    names; the family's own conversions apply instead, as for a model built from its config.
    """
    from transformers.core_model_loading import revert_weight_conversion

    saved = revert_weight_conversion(model, state_dict)
    recorded = vars(model).get("_weight_conversions", None)
    if recorded is None or recorded:
        return saved
    del model._weight_conversions
    try:
        family = revert_weight_conversion(model, state_dict)
    finally:
        model._weight_conversions = recorded
    return family if set(family) != set(saved) else saved  # same names: keep save_pretrained's own order


def saved_tensors(model: nn.Module, name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors ``save_pretrained`` writes for the model's tensor ``name`` alone (e.g. fused MoE
    experts back to one 2-D weight per expert). ``assembled`` is the way back."""
    return saved_state(model, {name: tensor})


def assembled(model: nn.Module, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's tensors made from these checkpoint tensors by transformers' own conversion on load
    (e.g. one 2-D weight per expert stacked into the fused 3-D experts parameter); the inverse of
    ``saved_tensors``, for the tensors of one block at a time."""
    from copy import deepcopy

    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    conversions = getattr(model, "_weight_conversions", None) or get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    by_pattern = {pattern: converter for converter in converters for pattern in converter.source_patterns}
    pending: dict[str, WeightConverter] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sorted(parts.items(), key=lambda item: dot_natural_key(item[0])):  # experts 0, 1, ..., 10 in order
        renamed, pattern = rename_source_key(key, renamings, converters)
        if pattern is None:
            out[renamed] = tensor
            continue
        pending.setdefault(renamed, deepcopy(by_pattern[pattern])).add_tensor(renamed, key, pattern, tensor)
    for target, converter in pending.items():
        for name, value in converter.convert(target, model=model, config=model.config).items():
            out[name] = value[0] if isinstance(value, list) else value
    return out
