"""What llama.cpp expects of each model family in a GGUF file, as data: architecture name, tensor layout
changes, and the hyper-parameter keys read from a Hugging Face config.

Only families that llmprune shrinks and that both llama.cpp and transformers' GGUF loader know are here;
``family_for`` refuses the others in one line. The tensor names come from the ``gguf`` package's own
``TensorNameMap``; this module adds only what the names do not say:

- llama.cpp's LLAMA architecture applies rotary embeddings to adjacent pairs of a head's channels, while
  transformers rotates the two halves of the head; so the rows of each q/k head are interleaved on the way
  out (transformers' GGUF loader undoes it on the way in).
- Gemma's RMSNorm multiplies by (1 + w) and stores w; llama.cpp multiplies by the stored weight, so 1 is
  added to every norm weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gguf
from gguf import GGUFValueType as T

from ..errors import LLMPruneError

Metadata = dict[str, tuple[Any, T]]  # GGUF key -> (value, value type); arrays carry their element type


@dataclass(frozen=True)
class GGUFFamily:
    arch: gguf.MODEL_ARCH
    rotary_pairs: bool = False  # llama.cpp rotates adjacent channel pairs: q/k rows are interleaved
    norm_plus_one: bool = False  # Gemma: the stored norm weight is 1 + w
    head_size_always: bool = False  # the converter always writes key/value lengths for this family
    extra: Callable[[Any, str], Metadata] | None = None  # family-specific keys from the config

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


def rope_theta(config, layer_type: str | None = None) -> float | None:
    """The rotary base, from transformers 5's ``rope_parameters`` (per layer type for Gemma 3) or older keys."""
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    if "rope_theta" in params:
        return float(params["rope_theta"])
    value = getattr(config, "rope_theta", None)
    return None if value is None else float(value)


def rope_scaling(config) -> list[tuple[str | None, dict]]:
    """Every (layer type, rope parameters) whose type is not the default one."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    nested = {k: v for k, v in params.items() if isinstance(v, dict)}
    entries = list(nested.items()) if nested else [(None, params)]
    return [(kind, p) for kind, p in entries if p.get("rope_type", p.get("type", "default")) not in ("default", None)]


def sliding_pattern(config) -> list[bool] | None:
    """One flag per block: does it use sliding-window attention (after shrink removed blocks, no fixed period)."""
    types = getattr(config, "layer_types", None)
    return None if not types else [kind == "sliding_attention" for kind in types]


def _softcaps(config, arch: str) -> Metadata:
    out: Metadata = {}
    for attr, key in (("attn_logit_softcapping", gguf.Keys.LLM.ATTN_LOGIT_SOFTCAPPING),
                      ("final_logit_softcapping", gguf.Keys.LLM.FINAL_LOGIT_SOFTCAPPING)):
        value = getattr(config, attr, None)
        if value is not None:
            out[key.format(arch=arch)] = (float(value), T.FLOAT32)
    return out


def _gemma_keys(config, arch: str) -> Metadata:
    """Sliding window, its per-block pattern, soft-capping; and the query scale llama.cpp cannot take."""
    head_dim = config.head_dim
    if getattr(config, "query_pre_attn_scalar", head_dim) != head_dim:
        # llama.cpp scales queries by 1/sqrt(head size) (by hidden/heads for the 27B sizes only): no key says otherwise.
        raise LLMPruneError(f"{config.model_type} with query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim "
                            f"{head_dim} has no GGUF form llama.cpp reads the same way")
    out = _softcaps(config, arch)
    if getattr(config, "sliding_window", None):
        out[gguf.Keys.Attention.SLIDING_WINDOW.format(arch=arch)] = (int(config.sliding_window), T.UINT32)
        pattern = sliding_pattern(config)
        if pattern:
            out[gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch)] = (pattern, T.BOOL)
    if arch == "gemma3":
        local = rope_theta(config, "sliding_attention") or getattr(config, "rope_local_base_freq", None)
        if local is not None:
            out[gguf.Keys.Rope.FREQ_BASE_SWA.format(arch=arch)] = (float(local), T.FLOAT32)
    return out


# model_type -> what llama.cpp needs. Mistral is written as LLAMA, as llama.cpp's own converter does.
FAMILIES: dict[str, GGUFFamily] = {
    "llama": GGUFFamily(gguf.MODEL_ARCH.LLAMA, rotary_pairs=True),
    "mistral": GGUFFamily(gguf.MODEL_ARCH.LLAMA, rotary_pairs=True),
    "qwen2": GGUFFamily(gguf.MODEL_ARCH.QWEN2),
    "qwen3": GGUFFamily(gguf.MODEL_ARCH.QWEN3, head_size_always=True),
    "gemma2": GGUFFamily(gguf.MODEL_ARCH.GEMMA2, norm_plus_one=True, head_size_always=True, extra=_gemma_keys),
    "gemma3_text": GGUFFamily(gguf.MODEL_ARCH.GEMMA3, norm_plus_one=True, head_size_always=True, extra=_gemma_keys),
}


def family_for(config) -> GGUFFamily:
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise LLMPruneError(f"no GGUF export for model type '{model_type}' (supported: {', '.join(sorted(FAMILIES))})")
    return family


def head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def rope_scaling_keys(config, arch: str) -> Metadata:
    """Linear rope scaling as llama.cpp reads it (applied to every layer; on Gemma 3 to its full-attention
    layers only, which is where transformers puts it). Other kinds are refused."""
    scaled = rope_scaling(config)
    if not scaled:
        return {}
    kinds = {p.get("rope_type", p.get("type")) for _, p in scaled}
    layer_kinds = {kind for kind, _ in scaled}
    only_full = layer_kinds <= {None} or (arch == "gemma3" and layer_kinds == {"full_attention"})
    if kinds != {"linear"} or not only_full or len(scaled) != 1:
        raise LLMPruneError(f"rope scaling ({', '.join(sorted(map(str, kinds)))}) has no GGUF export in llmprune yet "
                            "(linear scaling has)")
    return {gguf.Keys.Rope.SCALING_TYPE.format(arch=arch): ("linear", T.STRING),
            gguf.Keys.Rope.SCALING_FACTOR.format(arch=arch): (float(scaled[0][1]["factor"]), T.FLOAT32)}


def hyperparameters(config, family: GGUFFamily) -> Metadata:
    """The architecture keys llama.cpp reads, from the (possibly shrunk) config."""
    arch = family.name
    size = head_dim(config)
    fields: Metadata = {
        gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch): (int(config.max_position_embeddings), T.UINT32),
        gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch): (int(config.hidden_size), T.UINT32),
        gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch): (int(config.num_hidden_layers), T.UINT32),
        gguf.Keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch): (int(config.intermediate_size), T.UINT32),
        gguf.Keys.Attention.HEAD_COUNT.format(arch=arch): (int(config.num_attention_heads), T.UINT32),
        gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch):
            (int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads), T.UINT32),
        gguf.Keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch): (float(config.rms_norm_eps), T.FLOAT32),
        gguf.Keys.Rope.DIMENSION_COUNT.format(arch=arch): (size, T.UINT32),
        gguf.Keys.LLM.VOCAB_SIZE.format(arch=arch): (int(config.vocab_size), T.UINT32),
    }
    theta = rope_theta(config, "full_attention")
    if theta is not None:
        fields[gguf.Keys.Rope.FREQ_BASE.format(arch=arch)] = (theta, T.FLOAT32)
    if family.head_size_always or size * config.num_attention_heads != config.hidden_size:
        # Shrink removes whole heads: the head size no longer equals hidden / heads, which is llama.cpp's default.
        fields[gguf.Keys.Attention.KEY_LENGTH.format(arch=arch)] = (size, T.UINT32)
        fields[gguf.Keys.Attention.VALUE_LENGTH.format(arch=arch)] = (size, T.UINT32)
    fields.update(rope_scaling_keys(config, arch))
    if family.extra is not None:
        fields.update(family.extra(config, arch))
    return fields
