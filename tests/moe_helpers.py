"""Tiny random mixture-of-experts models of each family transformers 5 ships with fused experts."""
from __future__ import annotations

import torch
import transformers

# 4 experts, 2 per token, every matrix's input a multiple of 8; two blocks (DeepSeek-V3: the first dense).
COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256)

MOE_FAMILIES = {
    "mixtral": lambda: transformers.MixtralConfig(**COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        **COMMON, intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4,
        num_experts_per_tok=2, decoder_sparse_step=1),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        **COMMON, intermediate_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, head_dim=16),
    "deepseek_v3": lambda: transformers.DeepseekV3Config(
        **{**COMMON, "num_key_value_heads": 4}, intermediate_size=64, moe_intermediate_size=32, n_routed_experts=4,
        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=16,
        q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16),
    "gpt_oss": lambda: transformers.GptOssConfig(
        **COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, head_dim=16, sliding_window=16),
    # Not in anatomy.EXPERT_LAYOUTS: its layout is read from the flags transformers sets (no new code).
    "olmoe": lambda: transformers.OlmoeConfig(**COMMON, intermediate_size=32, num_experts=4, num_experts_per_tok=2),
}


def tiny_moe(family: str, seed: int = 0):
    """A tiny random MoE model with the default attention (what a folder reloads with)."""
    torch.manual_seed(seed)
    config = MOE_FAMILIES[family]()
    config.use_cache = False
    return transformers.AutoModelForCausalLM.from_config(config).eval()
