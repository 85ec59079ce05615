"""ADMM weight update (Boza, "Fast and Effective Weight Update for Pruned Large Language Models", TMLR 2024).

Layer objective: min ||W X - W0 X||^2 with W zero outside the mask. Everything happens in a
normalised basis where H = X X^T has a unit diagonal (column j of W scaled by sqrt(H_jj)), so one
rho and one damping suit every layer whatever the scale of its inputs. ADMM splits the weights
into W, which fits the data, and Z, which obeys the mask, with U the scaled dual:

    W = (W0 H + rho (Z - U)) (H + rho I)^-1     one inverse per layer, reused by every iteration
    Z = (W + U) restricted to the mask,  U = U + W - Z

The mask is chosen by |W + U| and tightened gradually: the sparsity follows a cubic schedule
over the first ``mask_iterations`` iterations (N:M: the full pattern re-chosen each of them),
then stays fixed. A final least-squares solve on that support, by conjugate gradients batched
over rows, gives the surviving weights their optimal values.

Statistics are SparseGPT's Hessian, so the two methods share one accumulator.
"""
from __future__ import annotations

import torch

from ..errors import LLMPruneError
from . import masks
from .base import PruneResult, SparsityTarget
from .sparsegpt import Hessian, SparseGPT

# Rows handled per step of the matrix products and of the final solve: each temporary then costs
# about 16 MB whatever the layer (a 4096 x 11008 layer needs 3 full-size float32 matrices, not 10).
ROW_BLOCK_ELEMENTS = 2**22


def _row_blocks(rows: int, columns: int) -> list[slice]:
    step = max(1, ROW_BLOCK_ELEMENTS // max(1, columns))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def normalised_hessian(hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(D^-1/2 H D^-1/2 + percdamp I, sqrt(D), dead) with D = diag(H); dead inputs (H_jj = 0) get scale 1.

    A new matrix: ``hessian`` may be shared by several layers and is not modified.
    """
    diagonal = torch.diag(hessian)
    dead = diagonal <= 0
    scale = torch.where(dead, torch.ones_like(diagonal), diagonal).sqrt()
    normalised = hessian / scale.unsqueeze(1)
    normalised.div_(scale.unsqueeze(0))
    # A dead input's row and column are zero; a unit diagonal keeps the system positive definite.
    normalised.diagonal()[dead] = 1.0
    normalised.diagonal().add_(percdamp)  # the mean diagonal is 1 here, so this is SparseGPT's damping
    return normalised, scale, dead


def invert_in_place(matrix: torch.Tensor) -> bool:
    """Overwrite the symmetric positive definite ``matrix`` with its inverse, by Cholesky; False if not
    positive definite (``matrix`` is then garbage). LAPACK works on column-major storage: handed the
    row-major matrix as is, torch copies it (and the factor is a new matrix), one more matrix of its size
    alive at the peak (321 MB at an 8,960-column layer); its transpose is that storage in column-major
    order, so the factor and the inverse are computed in the matrix's own memory. The factor is then of the
    transpose (the upper triangle): inv(M^T)^T = inv(M), equal to the copying path's floats where the
    matrix is exactly symmetric."""
    storage = matrix.mT  # the same memory read column-major: the transpose, equal to the matrix up to rounding
    info = torch.empty((), dtype=torch.int32, device=matrix.device)
    torch.linalg.cholesky_ex(storage, out=(storage, info))
    if info.item() != 0:
        return False
    torch.cholesky_inverse(storage, out=storage)
    return True


def _mask_fraction(iteration: int, schedule: int, sparsity: float) -> float:
    """Cubic schedule: sparsity s (1 - (1 - t/T)^3) after iteration t of T, reaching s at t = T."""
    progress = min(1.0, (iteration + 1) / schedule)
    return sparsity * (1.0 - (1.0 - progress) ** 3)


def _select(scores: torch.Tensor, target: SparsityTarget, fraction: float) -> torch.Tensor:
    if target.semi_structured:
        return masks.keep_n_of_m(scores, target.n, target.m)
    # All rows compete, as in SparseGPT's block-wide selection: the layer ends at int(numel * s) exactly.
    return masks.keep_per_layer(scores, fraction)


def refit_on_support(
    weight: torch.Tensor,
    targets: torch.Tensor,
    hessian: torch.Tensor,
    keep: torch.Tensor,
    iterations: int,
    tolerance: float,
) -> torch.Tensor:
    """Solve w_S H[S, S] = targets[S] for every row (S = the row's kept columns), in place from ``weight``.

    ``weight`` must be zero outside ``keep``; it is the starting point of conjugate gradients, run
    on all rows of a block at once (one matrix product per step) until every row's residual is
    below ``tolerance`` times its right-hand side, or for ``iterations`` steps.
    """
    tiny = torch.finfo(weight.dtype).tiny
    for rows in _row_blocks(*weight.shape):
        x, support = weight[rows], keep[rows].to(weight.dtype)
        residual = (targets[rows] - x @ hessian).mul_(support)
        goal = (targets[rows] * support).square().sum(dim=1) * tolerance**2
        direction = residual.clone()
        squared = residual.square().sum(dim=1)
        for _ in range(iterations):
            if bool((squared <= goal).all()):
                break
            product = (direction @ hessian).mul_(support)
            curvature = (direction * product).sum(dim=1)
            # A converged row has a zero direction; its step must be 0, not 0/0.
            step = torch.where(curvature > tiny, squared / curvature.clamp_min(tiny), torch.zeros_like(squared))
            x.addcmul_(step.unsqueeze(1), direction)
            residual.addcmul_(step.unsqueeze(1), product, value=-1.0)
            new_squared = residual.square().sum(dim=1)
            ratio = torch.where(squared > tiny, new_squared / squared.clamp_min(tiny), torch.zeros_like(squared))
            direction.mul_(ratio.unsqueeze(1)).add_(residual)
            squared = new_squared
    return weight


class ADMM(SparseGPT):
    """ADMM pruning with gradual mask selection. Options (keywords of ``get_method("admm", ...)``, or
    ``method_options`` in a recipe): ``iterations`` of ADMM (20), the first ``mask_iterations`` of
    which choose the mask (15); the penalty ``rho`` on the unit-diagonal Hessian (1.0); damping
    ``percdamp`` added to that diagonal, as SparseGPT's (0.01); at most ``refit_iterations`` (10)
    conjugate-gradient steps of the final solve, stopping early at ``refit_tolerance`` (1e-5)."""

    name = "admm"

    def __init__(
        self,
        iterations: int = 20,
        mask_iterations: int = 15,
        rho: float = 1.0,
        percdamp: float = 0.01,
        refit_iterations: int = 10,
        refit_tolerance: float = 1e-5,
    ) -> None:
        if int(iterations) < 1 or int(mask_iterations) < 1 or int(refit_iterations) < 0:
            raise LLMPruneError("ADMM: iterations and mask_iterations must be at least 1, refit_iterations at least 0")
        if not rho > 0 or not percdamp >= 0 or not refit_tolerance >= 0:
            raise LLMPruneError("ADMM: rho must be positive, percdamp and refit_tolerance non-negative")
        super().__init__(percdamp=percdamp)
        self.iterations, self.mask_iterations = int(iterations), int(mask_iterations)
        self.rho = float(rho)
        self.refit_iterations, self.refit_tolerance = int(refit_iterations), float(refit_tolerance)

    def prune(self, weight: torch.Tensor, stats: Hessian | None, target: SparsityTarget) -> PruneResult:
        return self.prune_with_mask(weight, stats, target)

    @torch.no_grad()
    def prune_with_mask(
        self, weight: torch.Tensor, stats: Hessian | None, target: SparsityTarget, keep: torch.Tensor | None = None
    ) -> PruneResult:
        """As ``prune``; with ``keep`` given the mask is fixed to it and only the weights are solved for."""
        rows, columns = weight.shape
        if keep is None and target.sparsity == 0:
            return PruneResult(keep=torch.ones_like(weight, dtype=torch.bool), weight=weight)

        def normalised() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            if stats is None:  # no data seen: the identity Hessian makes this magnitude pruning
                source = torch.eye(columns, dtype=torch.float32, device=weight.device)
            else:
                source = stats.matrix.to(device=weight.device, dtype=torch.float32)
            return normalised_hessian(source, self.percdamp)

        hessian, scale, dead = normalised()
        inverse = hessian.clone()
        inverse.diagonal().add_(self.rho)
        if not invert_in_place(inverse):
            raise LLMPruneError("ADMM: the layer Hessian is not positive semi-definite (NaN or infinite inputs?)")

        w = weight  # the caller's working copy becomes W: normalised W0 to start with
        w[:, dead] = 0.0
        w.mul_(scale.unsqueeze(0))
        blocks = _row_blocks(rows, columns)
        fit = torch.empty_like(w)  # W0 H, the data term of every update
        for block in blocks:
            torch.matmul(w[block], hessian, out=fit[block])
        # The iterations need only the inverse: the Hessian is made again for the final solve (the same
        # floats), so the two are never alive together with the iterations' four weight-sized matrices.
        del hessian
        u = torch.zeros_like(w)
        fixed = keep is not None
        if fixed:
            keep = keep.to(device=w.device, dtype=torch.bool)
        schedule = min(self.mask_iterations, self.iterations)
        cut = torch.empty_like(w)  # 1 where pruned: float, as a bool mask costs a conversion at every use
        if fixed:
            cut.copy_(~keep)
        for iteration in range(self.iterations):
            v = w.add_(u)  # V = W + U, in W's buffer: W itself is not needed again
            if not fixed and iteration < schedule:
                # |V| goes in U's buffer, which is overwritten just after: no extra full-size matrix.
                keep = _select(torch.abs(v, out=u), target, _mask_fraction(iteration, schedule, target.sparsity))
                cut.copy_(~keep)
            torch.mul(v, cut, out=u)  # U = V - Z: what the mask cuts off
            for block in blocks:
                # W0 H + rho (Z - U) with Z - U = V - 2U
                rhs = torch.add(fit[block], v[block], alpha=self.rho).add_(u[block], alpha=-2.0 * self.rho)
                torch.matmul(rhs, inverse, out=w[block])
        z = w.add_(u).mul_(keep)  # the last Z: the ADMM weights on the final support
        del u, cut, inverse
        refit_on_support(z, fit, normalised()[0], keep, self.refit_iterations, self.refit_tolerance)
        z.div_(scale.unsqueeze(0))
        z[:, dead] = 0.0
        return PruneResult(keep=keep, weight=z)
