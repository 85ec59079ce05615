"""Removing units from a block in place: narrower layers, least-squares compensation, fewer blocks.

Layers are narrowed by swapping in smaller parameters on the *same* module objects (and updating
their size attributes), never by replacing modules: the single-pass schedule narrows a consumer from
inside its own forward pre-hook, while the module's forward is about to run.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..errors import LLMPruneError
from ..anatomy import Conv1D, find_blocks, weight_matrix
from .finalize import shrunk_config
from .layouts import FamilyLayout, qkv_rows
from .scores import InputStatistics


def _is_conv1d(layer: nn.Module) -> bool:
    return bool(Conv1D) and isinstance(layer, Conv1D)


def _replace(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(layer, name)
    setattr(layer, name, nn.Parameter(value.to(old.dtype).contiguous(), requires_grad=old.requires_grad))


def keep_outputs(layer: nn.Module, rows: list[int] | torch.Tensor) -> None:
    """Keep only output units ``rows`` of a Linear or Conv1D layer (weight and bias)."""
    rows = torch.as_tensor(rows, dtype=torch.long, device=layer.weight.device)
    if _is_conv1d(layer):  # stored (inputs, outputs)
        _replace(layer, "weight", layer.weight.data[:, rows])
        layer.nf = len(rows)
    else:
        _replace(layer, "weight", layer.weight.data[rows])
        layer.out_features = len(rows)
    if layer.bias is not None:
        _replace(layer, "bias", layer.bias.data[rows])


def keep_inputs(layer: nn.Module, columns: list[int] | torch.Tensor, matrix: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> None:
    """Keep only input channels ``columns``; ``matrix`` (outputs x kept inputs) replaces their weights."""
    columns = torch.as_tensor(columns, dtype=torch.long, device=layer.weight.device)
    if matrix is None:
        matrix = weight_matrix(layer)[:, columns]
    if _is_conv1d(layer):
        _replace(layer, "weight", matrix.t())
    else:
        _replace(layer, "weight", matrix)
        layer.in_features = len(columns)
    if bias is not None:
        _replace(layer, "bias", bias)


def least_squares_refit(weight: torch.Tensor, stats: InputStatistics, keep: list[int] | torch.Tensor,
                        bias: torch.Tensor | None = None, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kept columns W'_K (and bias) that best reproduce the target outputs from X_K alone, in least squares.

    The target is W X (+ b), this layer's own outputs, or with a teacher in ``stats`` W X_t (+ b), the
    dense model's outputs of this layer (X_t: its inputs there, token for token), so that errors of the
    earlier shrunk layers get corrected too. Without a bias:
    W'_K = W C[K, :]^T (H[K, K] + damp * mean(diag) I)^-1 with C = X^T X_t (C = H without a teacher).
    A layer that already has a bias re-fits it too (a ones column appended to X; no bias is ever added,
    so configs stay stock).
    """
    keep = torch.as_tensor(keep, dtype=torch.long, device=weight.device)
    h = stats.hessian.double().to(weight.device)
    teacher = stats.cross is not None
    cross = stats.cross.double().to(weight.device) if teacher else h
    w = weight.double()
    h_kk = h[keep][:, keep]
    jitter = damp * float(h_kk.diagonal().mean().clamp_min(1e-12))
    h_kk = h_kk + jitter * torch.eye(len(keep), dtype=h.dtype, device=h.device)
    right = cross[keep] @ w.t()  # X_K^T X_t W^T
    if bias is None:
        solution = torch.linalg.solve(h_kk, right)
        return solution.t().to(weight.dtype), None
    sums = stats.sums.double().to(weight.device)
    target_sums = stats.teacher_sums.double().to(weight.device) if teacher else sums
    b = bias.double()
    n = float(stats.count)
    top = torch.cat([h_kk, sums[keep, None]], dim=1)
    bottom = torch.cat([sums[None, keep], torch.tensor([[n]], dtype=h.dtype, device=h.device)], dim=1)
    right = torch.cat([right + sums[keep, None] * b[None, :], (target_sums @ w.t() + n * b)[None, :]], dim=0)
    solution = torch.linalg.solve(torch.cat([top, bottom], dim=0), right)
    return solution[:-1].t().to(weight.dtype), solution[-1].to(bias.dtype)


def narrow_consumer(layer: nn.Module, keep: list[int], stats: InputStatistics | None, damp: float) -> None:
    """Drop a consumer's input channels outside ``keep``, re-fitting the rest when ``stats`` are given."""
    if stats is None:
        keep_inputs(layer, keep)
        return
    matrix, bias = least_squares_refit(weight_matrix(layer).float(), stats, keep,
                                       None if layer.bias is None else layer.bias.data.float(), damp)
    keep_inputs(layer, keep, matrix, bias)


def submodule(block: nn.Module, name: str) -> nn.Module:
    try:
        return block.get_submodule(name)
    except AttributeError:
        raise LLMPruneError(f"{type(block).__name__} has no layer '{name}' where its family's layout puts it") from None


def remove_mlp_channels(block: nn.Module, layout: FamilyLayout, keep: list[int], stats: InputStatistics | None,
                        damp: float = 0.01) -> None:
    """Keep MLP channels ``keep``: rows of every producer (each piece of a fused one), columns of the consumer."""
    for name, pieces in layout.mlp_producers:
        producer = submodule(block, name)
        width = weight_matrix(producer).shape[0] // pieces
        submodule_rows = [piece * width + j for piece in range(pieces) for j in keep]
        keep_outputs(producer, submodule_rows)
    narrow_consumer(submodule(block, layout.mlp_consumer), keep, stats, damp)
    mlp = submodule(block, layout.mlp_consumer.rsplit(".", 1)[0]) if "." in layout.mlp_consumer else block
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = len(keep)


HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_head")
KV_COUNT_ATTRIBUTES = ("num_key_value_heads", "num_kv_heads")


def keep_norm_channels(norm: nn.Module, channels: list[int]) -> None:
    """Keep channels ``channels`` of a norm over a projection's rows (its weight and bias)."""
    index = torch.as_tensor(channels, dtype=torch.long, device=norm.weight.device)
    for name in ("weight", "bias"):
        if isinstance(getattr(norm, name, None), torch.Tensor):
            _replace(norm, name, getattr(norm, name).data[index])
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
    module = submodule(block, attention.output.rsplit(".", 1)[0]) if "." in attention.output else block
    new_heads, new_kv = len(kept_q), len(kept_kv)
    for name in HEAD_COUNT_ATTRIBUTES:
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, new_heads)
    for name in KV_COUNT_ATTRIBUTES:
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, new_kv)
    if isinstance(getattr(module, "num_key_value_groups", None), int):
        module.num_key_value_groups = new_heads // new_kv
    # Some attention code (Phi-3's qkv split) reads head counts from the config it holds; the model's
    # shared config still describes the unshrunk blocks until finalize, so this block gets its own.
    if getattr(module, "config", None) is not None:
        module.config, _ = shrunk_config(module.config, replace(layout, mlp_consumer=None), 0, new_heads, new_kv, [])


def remove_blocks(model: nn.Module, layout: FamilyLayout, removed: list[int]) -> None:
    """Delete whole decoder blocks and renumber the survivors' ``layer_idx`` (KV-cache slots)."""
    if not removed:
        return
    path, blocks = find_blocks(model)
    kept = [index for index in range(len(blocks)) if index not in set(removed)]
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    survivors = nn.ModuleList([blocks[index] for index in kept])
    inverse_scaling = layout.inverse_layer_idx_scaling_key and getattr(model.config, layout.inverse_layer_idx_scaling_key, False)
    for new_index, (old_index, block) in enumerate(zip(kept, survivors)):
        if inverse_scaling and new_index != old_index:
            _keep_inverse_layer_scaling(block, layout, old_index, new_index)
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    setattr(parent, path.rsplit(".", 1)[-1], survivors)


def _keep_inverse_layer_scaling(block: nn.Module, layout: FamilyLayout, old_index: int, new_index: int) -> None:
    """GPT-2 divides the attention scores of block l by (l + 1): moving a block from slot ``old_index`` to
    ``new_index`` would change them, so its queries are scaled by (new + 1) / (old + 1) to compensate."""
    qkv = submodule(block, layout.attention.qkv)
    hidden = weight_matrix(qkv).shape[0] // 3
    factor = (new_index + 1) / (old_index + 1)
    matrix = weight_matrix(qkv).clone()
    matrix[:hidden] *= factor
    keep_inputs(qkv, list(range(matrix.shape[1])), matrix)
    if qkv.bias is not None:
        qkv.bias.data[:hidden] *= factor
    attention = submodule(block, layout.attention.output.rsplit(".", 1)[0])
    if isinstance(getattr(attention, "scaling", None), float):
        attention.scaling = attention.scaling * (old_index + 1) / (new_index + 1)
