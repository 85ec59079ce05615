"""Tiny random models pruned by hand, shared by the sparse-format, inspect and push tests."""
from __future__ import annotations

import torch
from torch import nn


def tiny_llama(dtype: torch.dtype = torch.float32, tie: bool = True, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    return model


def block_linears(model) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in name}


def prune_rows(model, fraction: float) -> dict[str, float]:
    """Zero the smallest-magnitude ``fraction`` of every row; returns name -> sparsity like a report."""
    layers = {}
    for name, module in block_linears(model).items():
        weight = module.weight.data
        drop = int(weight.shape[1] * fraction)
        idx = weight.float().abs().argsort(dim=1)[:, :drop]
        weight.scatter_(1, idx, 0)
        layers[name] = drop / weight.shape[1]
    return layers


def prune_24(model) -> dict[str, float]:
    """Keep the two largest of every group of four inputs: an exact 2:4 pattern."""
    layers = {}
    for name, module in block_linears(model).items():
        weight = module.weight.data
        groups = weight.reshape(weight.shape[0], -1, 4)
        idx = groups.float().abs().argsort(dim=-1)[..., :2]
        groups.scatter_(-1, idx, 0)
        layers[name] = 0.5
    return layers


def report_for(layers: dict[str, float], pattern: str | None = None, sparsity: float = 0.5, **extra) -> dict:
    report = {
        "method": "magnitude",
        "pattern": pattern,
        "target_sparsity": sparsity,
        "total_sparsity": sum(layers.values()) / len(layers),
        "layers": layers,
        "calibration": {"source": None, "nsamples": 0, "seqlen": 0, "seed": 0},
        "prune_seconds": 0.1,
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
    report.update(extra)
    return report


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns, so comparisons are exact (NaN, signed zeros and all)."""
    view = {4: torch.int32, 2: torch.int16, 1: torch.int8}[tensor.element_size()]
    return tensor.contiguous().view(view)


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert sorted(expected) == sorted(actual)
    for key in expected:
        assert expected[key].dtype == actual[key].dtype, key
        assert torch.equal(bits(expected[key]), bits(actual[key])), key
