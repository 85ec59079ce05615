"""The shrunk config, and transformers' own word on it, before any block is touched.

A plan (widths, head counts, how many blocks go) is accepted only when
1. the family's config class accepts the shrunk config (``validate()``, as ``save_pretrained`` runs it:
   e.g. Llama's "hidden size is a multiple of the heads"), and
2. a model built from it on the meta device (no memory, no weights) has, parameter for parameter, the
   shapes that the surgery gives a block (applied here to a meta copy of the first block), and the
   number of blocks the plan keeps. A family whose attention derives the head size from
   hidden_size // heads (GPT-2, OPT, GPT-NeoX, Falcon, StableLM) fails this for fewer heads, and so
   its heads are refused without any table saying so.
"""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from ..anatomy import find_blocks
from .finalize import shrunk_config
from .layouts import FamilyLayout
from .units import UNITS, Shape, WidthUnit, in_plan_order


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # huggingface_hub's strict dataclasses put the validator's name first and the reason after it
    reasons = [line for line in lines if "Error:" in line] or lines or [type(error).__name__]
    return reasons[-1].split("Error: ", 1)[-1]


def config_error(config) -> str | None:
    """Why the config class refuses ``config`` (rebuilt from its dict and validated), or None."""
    try:
        rebuilt = type(config).from_dict(config.to_dict())
        if hasattr(rebuilt, "validate"):
            rebuilt.validate()
    except Exception as error:  # any refusal of transformers' is the answer, whatever its class
        return _first_line(error)
    return None


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers live on the meta device (no data is copied)."""
    memo: dict[int, torch.Tensor] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(empty, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
    return copy.deepcopy(module, memo)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(parameter.shape) for name, parameter in module.named_parameters()}


def shape_error(model: nn.Module, layout: FamilyLayout, config, intermediate: int, heads: int, kv_heads: int,
                kept_blocks: int) -> str | None:
    """Why a model built from ``config`` would not hold the shrunk blocks (first differing tensor), or None."""
    _, blocks = find_blocks(model)
    block = meta_copy(blocks[0])
    shape = Shape(intermediate, heads, kv_heads)
    for name in in_plan_order(UNITS):  # attention before the MLP, as the block loop does
        if isinstance(UNITS[name], WidthUnit):
            UNITS[name].narrow(block, layout, shape)
    try:
        with torch.device("meta"):
            built = type(model)(config)
    except Exception as error:  # the family's own code refuses the config
        return _first_line(error)
    _, built_blocks = find_blocks(built)
    if len(built_blocks) != kept_blocks:
        return f"a model of this config has {len(built_blocks)} blocks, the plan keeps {kept_blocks}"
    want, got = _shapes(block), _shapes(built_blocks[0])
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            return (f"its {name} would be {list(got[name]) if name in got else 'absent'} in a model of this config, "
                    f"{list(want[name]) if name in want else 'absent'} after the surgery")
    return None


def plan_error(model: nn.Module, layout: FamilyLayout, intermediate: int, heads: int, kv_heads: int, blocks_removed: int) -> str | None:
    """Why transformers would not describe the model shrunk to these sizes (None: it does)."""
    _, blocks = find_blocks(model)
    removed = list(range(len(blocks) - blocks_removed, len(blocks)))  # which ones does not change the config's validity
    config, _ = shrunk_config(model.config, layout, intermediate, heads, kv_heads, removed)
    return config_error(config) or shape_error(model, layout, config, intermediate, heads, kv_heads, len(blocks) - blocks_removed)


@torch.no_grad()
def forward_error(model: nn.Module) -> str | None:
    """Why the (still dense) model fails a forward pass of a few tokens, or None: a model whose own
    config does not match its code (e.g. a head_dim its attention ignores) is refused before any work."""
    embeddings = model.get_input_embeddings()
    ids = torch.arange(1, 5, device=embeddings.weight.device).remainder(embeddings.weight.shape[0])[None]
    try:
        model(input_ids=ids, use_cache=False)
    except Exception as error:  # whatever the family's code raises, the answer is one line
        return f"{type(error).__name__}: {_first_line(error)}"
    return None
