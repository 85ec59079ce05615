"""SparseGPT (Frantar & Alistarh, 2023): optimal-brain-surgeon pruning with a column sweep.

Statistics: the layer Hessian H = (2/n) sum x x^T, accumulated in float32. Pruning sweeps
the columns left to right in blocks; each pruned weight's error is spread over the
columns not yet visited, weighted by the upper Cholesky factor of H^-1.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import LLMPruneError
from . import masks
from .base import PruneResult, PruningMethod, SparsityTarget


@contextmanager
def _one_thread():
    """SparseGPT's pruning step is a Cholesky factorisation and thousands of tiny kernels; on a
    busy 2-core machine OpenMP/LAPACK threads made it 7-50x slower than one thread (measured:
    a layer set 29.7 s with 2 threads, 1.0 s with one), and idle it gains little from them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Hessian:
    matrix: torch.Tensor
    tokens: int = field(default=0)


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, max_tries: int = 8) -> torch.Tensor:
    """Upper Cholesky factor of (H + damping I)^-1, raising the damping tenfold while H is not positive definite.

    ``hessian`` is damped in place (its diagonal is overwritten). At most two other matrices of its size
    are alive at once: an 8,960-column Hessian is 321 MB in float32, and an identity, the damped copy,
    the factor, the inverse and its factor side by side would be five more.
    """
    diagonal = torch.diag(hessian).clone()
    damping = percdamp * torch.mean(diagonal).item()
    damping = damping if damping > 0 else percdamp
    for _ in range(max_tries):
        hessian.diagonal().copy_(diagonal).add_(damping)  # H + damping I, the same floats as adding an identity
        lower, info = torch.linalg.cholesky_ex(hessian)
        if info.item() == 0:
            inverse = torch.cholesky_inverse(lower)
            del lower
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if info.item() == 0:
                return upper
        damping *= 10
    raise LLMPruneError("SparseGPT: the layer Hessian stayed singular after raising the damping; use more calibration data")


class SparseGPT(PruningMethod):
    name = "sparsegpt"

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01) -> None:
        self.blocksize = blocksize
        self.percdamp = percdamp

    def new_statistics(self, columns: int, device: torch.device) -> Hessian:
        return Hessian(torch.zeros(columns, columns, dtype=torch.float32, device=device))

    def update_statistics(self, stats: Hessian, inputs: torch.Tensor) -> None:
        # Running average of 2 x x^T, kept as a sum and rescaled, so batches of any size mix correctly.
        new_tokens = inputs.shape[0]
        total = stats.tokens + new_tokens
        stats.matrix.mul_(stats.tokens / total)
        stats.matrix.addmm_(inputs.t(), inputs, alpha=2.0 / total)
        stats.tokens = total

    def prune(self, weight: torch.Tensor, stats: Hessian | None, target: SparsityTarget) -> PruneResult:
        with _one_thread():
            return self._prune(weight, stats, target)

    def _prune(self, weight: torch.Tensor, stats: Hessian | None, target: SparsityTarget) -> PruneResult:
        rows, columns = weight.shape
        if stats is None:  # no data seen: the identity Hessian makes this magnitude pruning
            hessian = torch.eye(columns, dtype=torch.float32, device=weight.device)
        else:
            hessian = stats.matrix.clone()
        dead = torch.diag(hessian) == 0
        hessian[dead, dead] = 1.0
        weight[:, dead] = 0.0
        hinv = inverse_hessian_factor(hessian, self.percdamp)
        del hessian
        keep = torch.ones_like(weight, dtype=torch.bool)
        m = target.m
        # Blocks hold whole N:M groups, so a group never straddles two blocks.
        blocksize = self.blocksize if m is None else max(m, (self.blocksize // m) * m)

        for start in range(0, columns, blocksize):
            end = min(start + blocksize, columns)
            block = weight[:, start:end].clone()
            block_hinv = hinv[start:end, start:end]
            block_diag = torch.diag(block_hinv)
            errors = torch.zeros_like(block)
            prune_block = torch.zeros_like(block, dtype=torch.bool)
            if m is None:
                # Adaptive mask selection: choose the pruned set over the whole block at once.
                saliency = block.square() / block_diag.square().unsqueeze(0)
                prune_block = ~masks.keep_per_layer(saliency, target.sparsity)
            # error_j = (w_j - q_j) / Hinv_jj is w_j / Hinv_jj where pruned and 0 where kept,
            # so one multiply by this precomputed matrix gives it; pruned entries are zeroed
            # at the end, which keeps the loop to two kernel calls per column.
            error_scale = prune_block / block_diag.unsqueeze(0)
            for j in range(end - start):
                if m is not None and j % m == 0:
                    group = block[:, j : j + m].square() / block_diag[j : j + m].square().unsqueeze(0)
                    lowest = torch.topk(group, target.n, dim=1, largest=False).indices
                    prune_block[:, j : j + m].scatter_(1, lowest, True)
                    error_scale[:, j : j + m] = prune_block[:, j : j + m] / block_diag[j : j + m].unsqueeze(0)
                error = torch.mul(block[:, j], error_scale[:, j], out=errors[:, j])
                block[:, j:].addr_(error, block_hinv[j, j:], alpha=-1.0)
            weight[:, start:end] = block
            keep[:, start:end] = ~prune_block
            if end < columns:  # lazy batch update of everything right of the block
                weight[:, end:].sub_(errors @ hinv[start:end, end:])
        weight.masked_fill_(~keep, 0.0)
        return PruneResult(keep=keep, weight=weight)
