"""Attention heads: the same number of query heads from every key/value group, or whole key/value groups
with the query heads that read them. A query head is ``head_dim`` rows of q (and of its norms) and
``head_dim`` columns of the output projection; a key/value group adds its k and v rows.

Which head counts a family takes is transformers' word (``accepted``): the config class and a
meta-device model of the shrunk config, asked by the plan before any work.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...anatomy import weight_matrix
from ...errors import LLMPruneError
from ..layouts import FamilyLayout, qkv_rows, query_rows
from ..scores import InputStatistics
from ..surgery import keep_outputs, narrow_consumer, replace_parameter, rows_params, submodule
from .base import Choice, Groups, PlanContext, Shape, UnitCosts, WidthUnit, edited_config, writable

HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_head")
KV_COUNT_ATTRIBUTES = ("num_key_value_heads", "num_kv_heads")


def _norm_params(norm: nn.Module) -> int:
    return sum(p.numel() for p in norm.parameters(recurse=False))


def keep_norm_channels(norm: nn.Module, channels: list[int]) -> None:
    """Keep channels ``channels`` of a norm over a projection's rows (its weight and bias)."""
    index = torch.as_tensor(channels, dtype=torch.long, device=norm.weight.device)
    for name in ("weight", "bias"):
        if isinstance(getattr(norm, name, None), torch.Tensor):
            replace_parameter(norm, name, getattr(norm, name).data[index])
    if isinstance(getattr(norm, "normalized_shape", None), tuple):
        norm.normalized_shape = (len(channels),)


def remove_heads(block: nn.Module, layout: FamilyLayout, kept_q: list[int], kept_kv: list[int],
                 stats: InputStatistics | None, damp: float = 0.01) -> None:
    """Keep query heads ``kept_q`` and key/value heads ``kept_kv`` (global indices, whole heads only)."""
    attention = layout.attention
    heads, kv_heads, head_dim = attention.sizes
    q_channels = [h * head_dim + i for h in kept_q for i in range(head_dim)]
    kv_channels = [g * head_dim + i for g in kept_kv for i in range(head_dim)]
    if attention.qkv is not None:
        keep_outputs(submodule(block, attention.qkv), qkv_rows(attention.qkv_order, heads, kv_heads, head_dim, kept_q, kept_kv))
    else:
        keep_outputs(submodule(block, attention.q), q_channels)
        keep_outputs(submodule(block, attention.k), kv_channels)
        keep_outputs(submodule(block, attention.v), kv_channels)
    for name in attention.q_norms:
        keep_norm_channels(submodule(block, name), q_channels)
    for name in attention.kv_norms:
        keep_norm_channels(submodule(block, name), kv_channels)
    narrow_consumer(submodule(block, attention.output), q_channels, stats, damp)
    _set_head_counts(submodule(block, attention.output.rsplit(".", 1)[0]) if "." in attention.output else block,
                     layout, len(kept_q), len(kept_kv))


def _set_head_counts(module: nn.Module, layout: FamilyLayout, heads: int, kv_heads: int) -> None:
    for name in HEAD_COUNT_ATTRIBUTES:
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, heads)
    for name in KV_COUNT_ATTRIBUTES:
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, kv_heads)
    if isinstance(getattr(module, "num_key_value_groups", None), int):
        module.num_key_value_groups = heads // kv_heads
    # Some attention code (Phi-3's qkv split) reads head counts from the config it holds; the model's
    # shared config still describes the unshrunk blocks until finalize, so this block gets its own.
    if getattr(module, "config", None) is not None:
        edits = HEADS.config_edits(module.config, layout, Shape(0, heads, kv_heads))
        module.config, _ = edited_config(module.config, edits)


class AttentionHeads(WidthUnit):
    name = "heads"
    order = 1

    def costs(self, blocks: nn.ModuleList, layout: FamilyLayout) -> dict[str, int]:
        attention = layout.attention
        if attention is None:
            return {"heads": 0, "kv_heads": 0, "head_dim": 0, "q_head_params": 0, "kv_head_params": 0}
        block = blocks[0]
        heads, kv_heads, head_dim = attention.sizes
        output = submodule(block, attention.output)
        q_layer = submodule(block, attention.qkv or attention.q)
        kv_layer = submodule(block, attention.qkv or attention.k)
        # a query head's q rows, o columns and norm channels; a key/value head's k and v rows and norm channels
        q_head = head_dim * (rows_params(q_layer) + weight_matrix(output).shape[0])
        q_head += sum(_norm_params(submodule(block, name)) for name in attention.q_norms) // heads
        kv_head = 2 * head_dim * rows_params(kv_layer)
        kv_head += sum(_norm_params(submodule(block, name)) for name in attention.kv_norms) // kv_heads
        return {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "q_head_params": q_head, "kv_head_params": kv_head}

    def options(self, costs: UnitCosts) -> list[Choice]:
        """Fewer query heads in every group, or fewer whole groups; never the whole attention."""
        if not costs.heads:
            return []
        per_group = costs.heads // costs.kv_heads
        options = []
        for kept_per_group in range(1, per_group):
            options.append(self._choice(kept_per_group * costs.kv_heads, costs.kv_heads,
                                        (costs.heads - kept_per_group * costs.kv_heads) * costs.q_head_params))
        for kept_groups in range(1, costs.kv_heads):
            options.append(self._choice(kept_groups * per_group, kept_groups,
                                        (costs.kv_heads - kept_groups) * (per_group * costs.q_head_params + costs.kv_head_params)))
        return options

    @staticmethod
    def _choice(heads: int, kv_heads: int, removed: int) -> Choice:
        return Choice({"heads": heads, "kv_heads": kv_heads}, per_block=removed)

    def accepted(self, costs: UnitCosts, layout: FamilyLayout, config_refusal: Callable[[Shape], str | None],
                 model_refusal: Callable[[Shape], str | None]) -> tuple[list[Choice], str | None]:
        """The head counts transformers accepts (config class, then a meta-device model of the shrunk
        config holding the shrunk tensors), and why there are none when there are none."""
        if layout.attention is None:
            return [], layout.attention_missing
        options = self.options(costs)
        if not options:
            return [], "it has a single attention head"
        accepted, reason = [], None
        for option in options:
            error = config_refusal(Shape(costs.intermediate, option.sizes["heads"], option.sizes["kv_heads"]))
            if error is None:
                accepted.append(option)
            else:
                reason = reason or error
        if not accepted:
            return [], f"its config accepts no smaller head count ({reason})"
        # One meta model tells whether the family's attention honours the head size at all (GPT-2, OPT,
        # GPT-NeoX, Falcon and StableLM derive it from hidden_size // heads); the final plan is checked again.
        heads, kv_heads = max((o.sizes["heads"], o.sizes["kv_heads"]) for o in accepted)
        error = model_refusal(Shape(costs.intermediate, heads, kv_heads))
        if error is not None:
            return [], f"a model built with {heads} heads does not hold {heads} heads of size {costs.head_dim} ({error})"
        return accepted, None

    def check(self, costs: UnitCosts, multiple_of: int, choices: list[Choice] | None) -> None:
        if not choices:
            raise LLMPruneError("no head count can be removed from this model's attention")

    def choices(self, costs: UnitCosts, accepted: list[Choice] | None = None) -> list[Choice]:
        unchanged = self._choice(costs.heads, costs.kv_heads, 0)
        return [unchanged, *(self.options(costs) if accepted is None else accepted)]

    def imbalance(self, choice: Choice, costs: UnitCosts, context: PlanContext) -> float:
        # beside a filling unit attention loses the ratio's fraction of its own parameters; else the rest of the ratio
        if context.has_fill:
            share = context.ratio * (costs.heads * costs.q_head_params + costs.kv_heads * costs.kv_head_params) * context.kept
        else:
            share = context.target - context.removed_before
        return abs(context.kept * choice.per_block - share)

    def step(self, costs: UnitCosts, kept: int, multiple_of: int, choices: list[Choice]) -> int:
        return min(choice.per_block for choice in choices if not choice.idle) * kept

    def config_edits(self, config, layout: FamilyLayout, shape: Shape) -> list[tuple[str, int]]:
        """The head size never changes, so when the query heads do, ``head_dim`` is written explicitly
        (hidden_size // heads no longer gives it), and the key/value head key always holds the kept ones."""
        attention = layout.attention
        if attention is None or (shape.heads, shape.kv_heads) == (attention.heads, attention.kv_heads):
            return []
        edits = [(layout.head_dim_key, attention.head_dim)] if writable(config, layout.head_dim_key) else []
        edits.append((layout.heads_key, shape.heads))
        if layout.kv_heads_key:
            edits.append((layout.kv_heads_key, shape.kv_heads))
        return edits

    def consumer(self, layout: FamilyLayout) -> str:
        return layout.attention.output

    def changes(self, layout: FamilyLayout, shape: Shape, block: nn.Module) -> bool:
        attention = layout.attention
        return attention is not None and (shape.heads, shape.kv_heads) != (attention.heads, attention.kv_heads)

    def groups(self, block: nn.Module, layout: FamilyLayout, shape: Shape) -> Groups:
        attention = layout.attention
        heads, kv_heads, head_dim = attention.sizes
        per_group = heads // kv_heads
        q_layer = submodule(block, attention.qkv or attention.q)
        rows = query_rows(attention.qkv_order, heads, kv_heads, head_dim) if attention.qkv else list(range(heads * head_dim))
        producer_sq = weight_matrix(q_layer).float()[rows].pow(2).sum(1)
        if shape.kv_heads < kv_heads:  # whole key/value groups with their query heads
            columns = [[c for h in range(g * per_group, (g + 1) * per_group) for c in _columns(h, head_dim)] for g in range(kv_heads)]
            return Groups(columns, kv_heads - shape.kv_heads, producer_sq=producer_sq)
        # the same number of query heads from every group
        return Groups([_columns(h, head_dim) for h in range(heads)], heads - shape.heads,
                      clusters=[h // per_group for h in range(heads)], producer_sq=producer_sq)

    def remove(self, block: nn.Module, layout: FamilyLayout, shape: Shape, removed: list[int], stats: InputStatistics | None,
               damp: float, record: dict) -> list[int]:
        heads, kv_heads, head_dim = layout.attention.sizes
        per_group = heads // kv_heads
        if shape.kv_heads < kv_heads:  # ``removed`` are key/value groups
            kept_kv = [g for g in range(kv_heads) if g not in removed]
            kept_q = [h for h in range(heads) if h // per_group in kept_kv]
        else:  # ``removed`` are query heads
            kept_kv = list(range(kv_heads))
            kept_q = [h for h in range(heads) if h not in removed]
        remove_heads(block, layout, kept_q, kept_kv, stats, damp)
        record["query_heads_removed"] = [h for h in range(heads) if h not in kept_q]
        record["kv_heads_removed"] = [g for g in range(kv_heads) if g not in kept_kv]
        return [c for h in kept_q for c in _columns(h, head_dim)]

    def narrow(self, block: nn.Module, layout: FamilyLayout, shape: Shape) -> None:
        attention = layout.attention
        if attention is None or (shape.heads, shape.kv_heads) == (attention.heads, attention.kv_heads):
            return
        per_group = attention.heads // attention.kv_heads
        kept_kv = list(range(shape.kv_heads))
        if shape.kv_heads < attention.kv_heads:
            kept_q = [h for h in range(attention.heads) if h // per_group < shape.kv_heads]
        else:
            kept_q = [h for h in range(attention.heads) if h % per_group < shape.heads // shape.kv_heads]
        remove_heads(block, layout, kept_q, kept_kv, None)


def _columns(head: int, head_dim: int) -> list[int]:
    """The output projection's input columns that read query head ``head``."""
    return list(range(head * head_dim, (head + 1) * head_dim))


HEADS = AttentionHeads()
