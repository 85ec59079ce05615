"""Where the removable units of a decoder block sit, found from its modules as pruning finds its layers.

A unit is a whole MLP intermediate channel, a whole attention head (with grouped-query attention:
a query head, or a key/value group with the query heads that read it) or a whole decoder block.
``find_layout`` reads the first block: the linear layers (``nn.Linear`` or GPT-2's ``Conv1D``) are
grouped by the module that holds them, and

- the MLP is the group with one layer back to the residual width (the *consumer*, e.g. down_proj,
  fc2, c_proj, dense_4h_to_h) whose input width W the others (the *producers*) output, once each or
  as equal fused pieces (Phi-3's [gate; up] is 2 x W): gated or not, any activation;
- the attention is the group holding a query or fused q/k/v projection named as in the tables below;
  its consumer is the other layer back to the residual width; head_dim is that layer's input width over
  the config's query heads, and the key/value heads follow from the key (or fused) projection's rows;
  norms over all query (or key) rows (OLMo 2's q_norm / k_norm) narrow with the heads.

Which head counts a family accepts is not written here: ``checks.py`` asks transformers (the config
class and a meta-device model of the shrunk config). What remains is data, in this one place: the names
of attention projections, how fused q/k/v rows are ordered per family, the names of a norm between the
MLP and the residual add (no bridge can be folded there), and the config keys that hold the sizes.

Storage: ``nn.Linear`` stores (outputs, inputs); GPT-2's ``Conv1D`` stores (inputs, outputs): everything
here speaks of outputs and inputs through ``llmprune.anatomy.weight_matrix``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..anatomy import block_weights, find_blocks, is_linear, weight_matrix

QUERY_NAMES = ("q_proj", "query", "q")
KEY_NAMES = ("k_proj", "key", "k")
VALUE_NAMES = ("v_proj", "value", "v")
FUSED_QKV_NAMES = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "qkv")
# How a fused q/k/v projection orders its output rows, by model type; a type not listed is "stacked",
# [q; k; v] (Phi-3's qkv_proj, GPT-2's c_attn). "grouped": for each key/value group its query heads, then
# its key and value head (Falcon; with one query head per group it is GPT-NeoX's per-head [q, k, v]).
FUSED_QKV_ORDER = {"gpt_neox": "grouped", "falcon": "grouped"}
# A norm between the MLP's output layer and the residual add (Gemma 2/3, OLMo 2): no linear map of the
# residual stream can be folded into that layer, so removed blocks get no bridge.
MLP_OUTPUT_NORMS = ("post_feedforward_layernorm",)
# Config keys, first present wins: the MLP width, the key/value head count, GPT-2's inverse-layer scaling.
INTERMEDIATE_KEYS = ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size")
KV_HEADS_KEYS = ("num_key_value_heads", "num_kv_heads")
INVERSE_LAYER_SCALING_KEYS = ("scale_attn_by_inverse_layer_idx",)


@dataclass(frozen=True)
class AttentionLayout:
    output: str  # the consumer of the heads (o_proj, dense, out_proj, c_proj)
    heads: int
    kv_heads: int
    head_dim: int
    q: str | None = None  # separate projections ...
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # ... or one fused projection
    qkv_order: str = "stacked"
    q_norms: tuple[str, ...] = ()  # norms over all query rows, narrowed with the query heads
    kv_norms: tuple[str, ...] = ()  # norms over all key rows, narrowed with the key/value heads

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.heads, self.kv_heads, self.head_dim


@dataclass(frozen=True)
class FamilyLayout:
    """The units of one model's blocks; ``mlp_missing`` / ``attention_missing`` say why a kind is absent."""

    mlp_producers: tuple[tuple[str, int], ...] = ()  # (layer name inside the block, equal pieces on its output axis)
    mlp_consumer: str | None = None
    attention: AttentionLayout | None = None
    intermediate_key: str | None = "intermediate_size"
    heads_key: str = "num_attention_heads"
    kv_heads_key: str | None = "num_key_value_heads"
    head_dim_key: str = "head_dim"
    layers_key: str = "num_hidden_layers"
    # GPT-2 optionally divides attention scores by (layer_idx + 1): renumbering a block after
    # block removal must then rescale its queries so the block computes what it did before.
    inverse_layer_idx_scaling_key: str | None = None
    mlp_output_norm: str | None = None
    mlp_missing: str | None = None
    attention_missing: str | None = None


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _first_key(config, keys: tuple[str, ...]) -> str | None:
    present = config.to_dict()
    return next((key for key in keys if key in present), None)


def _find_mlp(groups: dict[str, list[tuple[str, nn.Module]]], hidden: int, skip: str | None):
    """(producers, consumer) of the one group shaped like an MLP, or None."""
    found = []
    for parent, layers in groups.items():
        if parent == skip:
            continue
        shapes = {name: tuple(weight_matrix(layer).shape) for name, layer in layers}
        # The consumer maps W back to the residual width; among several candidates, the last registered.
        consumers = [name for name in shapes if shapes[name][0] == hidden]
        for consumer in reversed(consumers):
            width = shapes[consumer][1]
            producers = [name for name in shapes if name != consumer]
            if producers and all(shapes[p][1] == hidden and shapes[p][0] % width == 0 for p in producers):
                found.append((tuple((p, shapes[p][0] // width) for p in producers), consumer))
                break
    return found[0] if len(found) == 1 else None


def _find_attention(model: nn.Module, block: nn.Module, groups, hidden: int) -> tuple[AttentionLayout | None, str | None, str | None]:
    """(layout, the attention's parent module name, why heads are not removable)."""
    config = model.config
    for parent, layers in groups.items():
        by_leaf = {_leaf(name): name for name, _ in layers}
        fused = next((by_leaf[n] for n in FUSED_QKV_NAMES if n in by_leaf), None)
        q = next((by_leaf[n] for n in QUERY_NAMES if n in by_leaf), None)
        if fused is None and q is None:
            continue
        k = next((by_leaf[n] for n in KEY_NAMES if n in by_leaf), None)
        v = next((by_leaf[n] for n in VALUE_NAMES if n in by_leaf), None)
        inputs = {fused, q, k, v} - {None}
        outputs = [name for name, layer in layers if name not in inputs and weight_matrix(layer).shape[0] == hidden]
        heads = getattr(config, "num_attention_heads", None)
        if len(outputs) != 1 or not isinstance(heads, int) or (fused is None and (k is None or v is None)):
            return None, parent, "its attention projections are not recognised"
        output = outputs[0]
        rows = {name: weight_matrix(block.get_submodule(name)).shape[0] for name in inputs}
        width = weight_matrix(block.get_submodule(output)).shape[1]
        if width % heads:
            return None, parent, f"its attention output reads {width} channels, not a multiple of {heads} heads"
        head_dim = width // heads
        if fused is not None:
            kv_rows = (rows[fused] - width) // 2
            order = FUSED_QKV_ORDER.get(getattr(config, "model_type", None), "stacked")
        else:
            kv_rows = rows[k]
            order = "stacked"
            if rows[q] != width or rows[v] != kv_rows:
                return None, parent, "its query/key/value projections do not have one row per head channel"
        if kv_rows <= 0 or kv_rows % head_dim or heads % (kv_rows // head_dim):
            return None, parent, "its key/value heads do not divide its query heads"
        kv_heads = kv_rows // head_dim
        attention = block.get_submodule(parent) if parent else block
        q_norms, kv_norms = [], []
        for name, child in attention.named_children():
            weight = getattr(child, "weight", None)
            if is_linear(child) or weight is None or weight.dim() != 1:
                continue
            full = f"{parent}.{name}" if parent else name
            if weight.shape[0] == width:
                q_norms.append(full)
            elif weight.shape[0] == kv_rows:
                kv_norms.append(full)
        layout = AttentionLayout(output, heads, kv_heads, head_dim, q=q if fused is None else None, k=k if fused is None else None,
                                 v=v if fused is None else None, qkv=fused, qkv_order=order,
                                 q_norms=tuple(q_norms), kv_norms=tuple(kv_norms))
        return layout, parent, None
    return None, None, "no attention projection is recognised in its blocks"


def find_layout(model: nn.Module) -> FamilyLayout:
    """The units of ``model``'s decoder blocks, read from its first block's modules."""
    config = model.config
    _, blocks = find_blocks(model)
    block = blocks[0]
    hidden = getattr(config, "hidden_size", None)
    groups: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module in block.named_modules():
        if is_linear(module):
            groups.setdefault(_parent(name), []).append((name, module))
    attention, attention_parent, attention_missing = _find_attention(model, block, groups, hidden)
    moe = any(weight.expert is not None for weight in block_weights(block).values())
    mlp = None if moe else _find_mlp(groups, hidden, attention_parent)
    mlp_missing = None
    if moe:
        mlp_missing = "its MLP is a mixture of experts (shrink removes no expert channels or experts)"
    elif mlp is None:
        mlp_missing = "no MLP (one layer back to the residual width fed by the others) is recognised in its blocks"
    names = {name for name, _ in block.named_modules()}
    return FamilyLayout(
        mlp_producers=mlp[0] if mlp else (),
        mlp_consumer=mlp[1] if mlp else None,
        attention=attention,
        intermediate_key=_first_key(config, INTERMEDIATE_KEYS),
        kv_heads_key=_first_key(config, KV_HEADS_KEYS),
        inverse_layer_idx_scaling_key=_first_key(config, INVERSE_LAYER_SCALING_KEYS),
        mlp_output_norm=next((name for name in MLP_OUTPUT_NORMS if name in names), None),
        mlp_missing=mlp_missing,
        attention_missing=attention_missing,
    )


def attention_sizes(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) as a config describes them (an explicit head_dim first)."""
    heads = config.num_attention_heads
    kv_heads = next((getattr(config, key) for key in KV_HEADS_KEYS if getattr(config, key, None)), None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, head_dim


def query_rows(order: str, heads: int, kv_heads: int, head_dim: int) -> list[int]:
    """Output rows of a fused qkv projection that hold the queries, head by head."""
    if order == "grouped":
        per_group = heads // kv_heads
        starts = [(h // per_group) * (per_group + 2) + h % per_group for h in range(heads)]
        return [start * head_dim + i for start in starts for i in range(head_dim)]
    return list(range(heads * head_dim))


def qkv_rows(order: str, heads: int, kv_heads: int, head_dim: int, kept_q: list[int], kept_kv: list[int]) -> list[int]:
    """Output rows of a fused qkv projection that serve the kept query heads and key/value heads, in the
    order the shrunk projection stores them (queries first for "stacked"; group by group for "grouped")."""
    def head(start: int) -> list[int]:
        return list(range(start * head_dim, (start + 1) * head_dim))

    if order == "stacked":
        return ([r for h in kept_q for r in head(h)] + [r for g in kept_kv for r in head(heads + g)]
                + [r for g in kept_kv for r in head(heads + kv_heads + g)])
    if order == "grouped":
        per_group = heads // kv_heads
        rows = []
        for g in kept_kv:
            base = g * (per_group + 2)
            rows += [r for h in kept_q if h // per_group == g for r in head(base + h % per_group)]
            rows += head(base + per_group) + head(base + per_group + 1)
        return rows
    raise ValueError(f"unknown fused qkv order '{order}'")
