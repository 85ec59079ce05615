"""Mask bookkeeping: global magnitude and random masks, applying them, saving them compactly.

A mask set maps a prunable parameter name to a bool tensor of its shape (True = kept).
Sparsity is always counted over all prunable weights together (one global threshold).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import LLMPruneError

Masks = dict[str, torch.Tensor]


def dense_masks(params: dict[str, torch.Tensor]) -> Masks:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in params.items()}


def sparsity(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total


def _count_to_prune(masks_or_params: dict, target: float) -> int:
    if not 0 <= target < 1:
        raise LLMPruneError(f"sparsity must be in [0, 1) (got {target})")
    total = sum(t.numel() for t in masks_or_params.values())
    return int(round(target * total))


def _split(flat_keep: torch.Tensor, like: dict[str, torch.Tensor]) -> Masks:
    masks, start = {}, 0
    for name, tensor in like.items():
        masks[name] = flat_keep[start : start + tensor.numel()].view(tensor.shape).clone()
        start += tensor.numel()
    return masks


def global_magnitude_masks(params: dict[str, torch.Tensor], target: float, current: Masks | None = None) -> Masks:
    """Keep the largest |w| across ALL prunable matrices so that ``target`` of them are pruned.

    Weights already pruned by ``current`` stay pruned (they rank below every live weight),
    so masks only ever shrink from round to round.
    """
    scores = []
    for name, p in params.items():
        # ranked on the CPU, where the masks live, whatever device the weights are on
        score = p.detach().abs().float().flatten().cpu()
        if current is not None:
            score = torch.where(current[name].flatten().cpu(), score, torch.full_like(score, -1.0))
        scores.append(score)
    flat = torch.cat(scores)
    k = _count_to_prune(params, target)
    if current is not None and k < flat.numel() - sum(int(m.sum()) for m in current.values()):
        raise LLMPruneError(f"target sparsity {target:.1%} is below the current mask's {sparsity(current):.1%}")
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        # a stable sort makes ties (equal magnitudes) break the same way on every run
        order = torch.sort(flat, stable=True).indices
        keep[order[:k]] = False
    return _split(keep, params)


def random_masks(params: dict[str, torch.Tensor], target: float, seed: int) -> Masks:
    """Exactly ``target`` of all prunable weights pruned, chosen uniformly at random (global)."""
    total = sum(p.numel() for p in params.values())
    k = _count_to_prune(params, target)
    generator = torch.Generator().manual_seed(seed)
    keep = torch.ones(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=generator)[:k]] = False
    return _split(keep, params)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place (exact zeros, whatever the optimiser just did)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        param = params[name]
        param.mul_(mask.to(device=param.device, dtype=param.dtype))


def save_masks(masks: Masks, path: Path) -> None:
    """Bit-packed (1/8 of a bool tensor) so a mask per round stays small on disk."""
    packed = {name: (list(m.shape), np.packbits(m.flatten().cpu().numpy())) for name, m in masks.items()}
    tmp = Path(path).with_suffix(".tmp")
    torch.save({n: (shape, torch.from_numpy(bits)) for n, (shape, bits) in packed.items()}, tmp)
    tmp.replace(path)


def load_masks(path: Path) -> Masks:
    stored = torch.load(path, weights_only=True)
    masks = {}
    for name, (shape, bits) in stored.items():
        count = int(np.prod(shape))
        flat = np.unpackbits(bits.numpy(), count=count).astype(bool)
        masks[name] = torch.from_numpy(flat).view(*shape)
    return masks
