"""Tiny GGUF files written with the gguf package's own writer: several quant types, a byte-level tokenizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def byte_level_tokens() -> list[str]:
    """The 256 byte-level BPE symbols (GPT-2's byte-to-unicode table), in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = dict(zip(printable, printable))
    extra = 0
    for byte in range(256):
        if byte not in codes:
            codes[byte] = 256 + extra
            extra += 1
    return [chr(codes[byte]) for byte in range(256)]


def write_tiny_gguf(path: Path, arch: str = "qwen2", hidden: int = 64, inter: int = 128, layers: int = 3,
                    heads: int = 4, kv_heads: int = 2, seed: int = 0) -> Path:
    """A small random ``arch`` model (qwen2 or llama) with Q8_0, Q4_0, F16, BF16 and F32 tensors, untied lm_head."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    tokens = byte_level_tokens() + ["ĠĠ", "<|endoftext|>"]
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if arch == "qwen2" else "default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - 1) + [3])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges(["Ġ Ġ"])
    writer.add_eos_token_id(vocab - 1)
    writer.add_bos_token_id(vocab - 1)
    rng = np.random.default_rng(seed)

    def tensor(name: str, shape: tuple[int, ...], kind) -> None:
        values = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if kind == Q.F32:
            writer.add_tensor(name, values)
        elif kind == Q.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            data = gguf.quants.quantize(values, kind)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)

    head_dim = hidden // heads
    tensor("token_embd.weight", (vocab, hidden), Q.Q8_0)
    tensor("output.weight", (vocab, hidden), Q.F16)
    tensor("output_norm.weight", (hidden,), Q.F32)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,), Q.F32)
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,), Q.F32)
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden), Q.Q8_0)
        tensor(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), Q.F16)
        tensor(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden), Q.BF16)
        if arch == "qwen2":
            for part, size in (("q", hidden), ("k", kv_heads * head_dim), ("v", kv_heads * head_dim)):
                tensor(f"blk.{i}.attn_{part}.bias", (size,), Q.F32)
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden), Q.Q8_0)
        tensor(f"blk.{i}.ffn_gate.weight", (inter, hidden), Q.Q4_0 if i == 0 else Q.Q8_0)
        tensor(f"blk.{i}.ffn_up.weight", (inter, hidden), Q.F32)
        tensor(f"blk.{i}.ffn_down.weight", (hidden, inter), Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
