"""Where the removable units of each model family sit, as data (one table, no code per family).

A unit is a whole MLP intermediate channel, a whole attention head (with grouped-query attention:
a query head, or a key/value group with the query heads that read it) or a whole decoder block.
Each entry names, inside one decoder block, the layers that *produce* a unit (their output rows)
and the layer that *consumes* it (its input columns), plus the config keys that record the sizes.

Storage conventions (checked against the transformers 5.24 sources):
- ``nn.Linear`` stores (outputs, inputs); GPT-2's ``Conv1D`` stores (inputs, outputs): surgery
  reads both through ``llmprune.anatomy.weight_matrix`` so the table speaks of outputs and inputs only.
- Fused producers are split into equal pieces along their output axis: Phi-3 ``gate_up_proj`` is
  [gate; up] (``chunk(2)``), so channel j is row j of each half.
- Fused attention projections: Phi-3 ``qkv_proj`` and GPT-2 ``c_attn`` are [q; k; v] along the
  output axis ("stacked"); GPT-NeoX ``query_key_value`` is interleaved per head as
  [h0: q, k, v; h1: q, k, v; ...] ("per_head").
- GPT-2, OPT and GPT-NeoX compute the head size as hidden_size // num_heads in their attention
  modules, so a stock config cannot describe fewer heads of the same size: their heads are not
  removable (MLP channels and blocks are).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import LLMPruneError


@dataclass(frozen=True)
class AttentionLayout:
    output: str  # the consumer of the heads (o_proj, dense, out_proj, c_proj)
    q: str | None = None  # separate projections ...
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # ... or one fused projection
    qkv_order: str = "stacked"  # "stacked" = [q; k; v], "per_head" = [h: q, k, v] for each head
    head_dim_explicit: bool = True  # the config's head_dim (or its default) is honoured with fewer heads
    extra_heads_attributes: tuple[str, ...] = ()  # attention-module attributes to refresh beyond the usual


@dataclass(frozen=True)
class FamilyLayout:
    mlp_producers: tuple[tuple[str, int], ...]  # (layer name inside the block, equal pieces on its output axis)
    mlp_consumer: str
    attention: AttentionLayout
    intermediate_key: str = "intermediate_size"
    heads_key: str = "num_attention_heads"
    kv_heads_key: str | None = "num_key_value_heads"
    head_dim_key: str = "head_dim"
    layers_key: str = "num_hidden_layers"
    # GPT-2 optionally divides attention scores by (layer_idx + 1): renumbering a block after
    # block removal must then rescale its queries so the block computes what it did before.
    inverse_layer_idx_scaling_key: str | None = None
    # A norm between the MLP's output layer and the residual add (Gemma 2/3): no linear map of the
    # residual stream can then be folded into that layer (the block-removal bridge is refused).
    mlp_output_norm: str | None = None


_LLAMA = FamilyLayout(
    mlp_producers=(("mlp.gate_proj", 1), ("mlp.up_proj", 1)),
    mlp_consumer="mlp.down_proj",
    attention=AttentionLayout(output="self_attn.o_proj", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj"),
)
_GEMMA2 = replace(_LLAMA, mlp_output_norm="post_feedforward_layernorm")
_PHI3 = FamilyLayout(
    mlp_producers=(("mlp.gate_up_proj", 2),),
    mlp_consumer="mlp.down_proj",
    attention=AttentionLayout(output="self_attn.o_proj", qkv="self_attn.qkv_proj", qkv_order="stacked"),
)
_OPT = FamilyLayout(
    mlp_producers=(("fc1", 1),),
    mlp_consumer="fc2",
    attention=AttentionLayout(output="self_attn.out_proj", q="self_attn.q_proj", k="self_attn.k_proj",
                              v="self_attn.v_proj", head_dim_explicit=False),
    intermediate_key="ffn_dim",
    kv_heads_key=None,
)
_GPT2 = FamilyLayout(
    mlp_producers=(("mlp.c_fc", 1),),
    mlp_consumer="mlp.c_proj",
    attention=AttentionLayout(output="attn.c_proj", qkv="attn.c_attn", qkv_order="stacked", head_dim_explicit=False),
    intermediate_key="n_inner",
    kv_heads_key=None,
    inverse_layer_idx_scaling_key="scale_attn_by_inverse_layer_idx",
)
_GPT_NEOX = FamilyLayout(
    mlp_producers=(("mlp.dense_h_to_4h", 1),),
    mlp_consumer="mlp.dense_4h_to_h",
    attention=AttentionLayout(output="attention.dense", qkv="attention.query_key_value", qkv_order="per_head",
                              head_dim_explicit=False),
    kv_heads_key=None,
)

# config.model_type -> layout. Families not listed here whose blocks have Llama-style MLP names
# still get MLP channels and blocks (see layout_for); their heads need an entry.
LAYOUTS: dict[str, FamilyLayout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "phi3": _PHI3,
    "opt": _OPT,
    "gpt2": _GPT2,
    "gpt_neox": _GPT_NEOX,
}


def layout_for(model) -> tuple[FamilyLayout, bool]:
    """(layout, known): the family's table entry, or the Llama-style guess when the modules fit it."""
    model_type = getattr(model.config, "model_type", None)
    if model_type in LAYOUTS:
        return LAYOUTS[model_type], True
    from ..anatomy import find_blocks

    _, blocks = find_blocks(model)
    names = {name for name, _ in blocks[0].named_modules()}
    if {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} <= names:
        return _LLAMA, False
    raise LLMPruneError(f"no structured-pruning layout for model type '{model_type}' (known: {', '.join(sorted(LAYOUTS))})")


def attention_sizes(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) as the config (and the attention code) define them."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, head_dim


def qkv_rows(order: str, heads: int, kv_heads: int, head_dim: int, kept_q: list[int], kept_kv: list[int]) -> list[int]:
    """Output rows of a fused qkv projection that serve the kept query heads and key/value heads."""
    if order == "stacked":
        q = [h * head_dim + i for h in kept_q for i in range(head_dim)]
        k = [heads * head_dim + g * head_dim + i for g in kept_kv for i in range(head_dim)]
        v = [(heads + kv_heads) * head_dim + g * head_dim + i for g in kept_kv for i in range(head_dim)]
        return q + k + v
    if order == "per_head":  # one key/value per query head (no grouping in these families)
        return [h * 3 * head_dim + i for h in kept_q for i in range(3 * head_dim)]
    raise LLMPruneError(f"unknown fused qkv order '{order}'")
