"""Scores for the input channels of a consumer layer (down_proj, o_proj) and choosing what to remove.

Every score reads the consumer's weight W (outputs x inputs) and the statistics of its calibration
inputs X (tokens x inputs) gathered by the block loop: H = X^T X in float32, the per-channel sums and
the token count. A low score means the channel matters little; units made of several channels (a head
is head_dim channels) score as the sum of their channels, except the greedy second-order choice,
which scores a unit as a whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import LLMPruneError

SCORES = ("magnitude", "wanda", "fluctuation", "hessian", "obs")


@dataclass
class InputStatistics:
    """Sufficient statistics of a layer's inputs: H = X^T X, column sums, token count (float32 / float64).

    With a teacher (the same layer's inputs in the dense model on the dense model's own hidden states,
    token for token), also the cross-covariance C = X^T X_teacher and the teacher's column sums, so the
    least-squares re-fit can aim at the dense model's outputs instead of this layer's own.
    """

    hessian: torch.Tensor
    sums: torch.Tensor
    count: int = 0
    cross: torch.Tensor | None = None
    teacher_sums: torch.Tensor | None = None

    @classmethod
    def empty(cls, columns: int, device, teacher: bool = False) -> "InputStatistics":
        stats = cls(torch.zeros(columns, columns, device=device), torch.zeros(columns, dtype=torch.float64, device=device))
        if teacher:
            stats.cross = torch.zeros(columns, columns, device=device)
            stats.teacher_sums = torch.zeros(columns, dtype=torch.float64, device=device)
        return stats

    def update(self, inputs: torch.Tensor, teacher_inputs: torch.Tensor | None = None) -> None:
        flat = inputs.reshape(-1, inputs.shape[-1]).float()
        self.hessian.addmm_(flat.t(), flat)
        self.sums += flat.sum(0, dtype=torch.float64)
        self.count += flat.shape[0]
        if self.cross is not None:
            if teacher_inputs is None or teacher_inputs.numel() != inputs.numel():
                raise LLMPruneError("the teacher's layer inputs do not match the calibration tokens")
            teacher = teacher_inputs.reshape(flat.shape).to(flat.device).float()
            self.cross.addmm_(flat.t(), teacher)
            self.teacher_sums += teacher.sum(0, dtype=torch.float64)


def channel_scores(kind: str, weight: torch.Tensor, stats: InputStatistics | None, producer_sq: torch.Tensor | None = None) -> torch.Tensor:
    """One score per input channel of ``weight`` (the sum-based kinds; ``obs`` is chosen greedily)."""
    weight = weight.float()
    column_sq = weight.pow(2).sum(0)
    if kind == "magnitude":  # the squared norm of all the unit's weights: consumer column + producer rows
        return column_sq + (producer_sq if producer_sq is not None else 0.0)
    if stats is None:
        raise LLMPruneError(f"score '{kind}' needs calibration statistics")
    diagonal = stats.hessian.diagonal().clamp_min(0)
    if kind == "wanda":  # Wanda-sp: sum over outputs of |W_ij| * ||X_j||
        return weight.abs().sum(0) * diagonal.sqrt()
    if kind == "fluctuation":  # FLAP: Var over tokens of X_j times ||W[:, j]||^2
        count = max(stats.count, 1)
        mean = (stats.sums / count).float()
        return (diagonal / count - mean.pow(2)).clamp_min(0) * column_sq
    if kind == "hessian":  # the rise of ||W X - W' X||^2 when channel j alone is zeroed: ||W_j||^2 H_jj
        return column_sq * diagonal
    raise LLMPruneError(f"unknown score '{kind}' (use {', '.join(SCORES)})")


def _eligible(alive: list[bool], clusters: list[int] | None) -> list[int]:
    """Alive units; with clusters (the key/value group of each query head), only those of the
    fullest clusters, so that every cluster loses the same number."""
    indices = [i for i, keep in enumerate(alive) if keep]
    if clusters is None:
        return indices
    counts: dict[int, int] = {}
    for i in indices:
        counts[clusters[i]] = counts.get(clusters[i], 0) + 1
    fullest = max(counts.values())
    return [i for i in indices if counts[clusters[i]] == fullest]


def lowest_units(unit_scores: torch.Tensor, n_remove: int, clusters: list[int] | None = None) -> list[int]:
    """The ``n_remove`` lowest-scoring units, the same number from each cluster when clusters are given."""
    if clusters is None:
        return sorted(int(i) for i in torch.argsort(unit_scores, stable=True)[:n_remove])
    alive = [True] * len(unit_scores)
    removed = []
    for _ in range(n_remove):
        eligible = _eligible(alive, clusters)
        pick = min(eligible, key=lambda i: float(unit_scores[i]))
        alive[pick] = False
        removed.append(pick)
    return sorted(removed)


def damped_inverse(hessian: torch.Tensor, damp: float, max_tries: int = 6) -> torch.Tensor:
    """(H + damp * mean(diag H) I)^-1, through a Cholesky factorisation in float64 (float64 because
    calibration Hessians span many magnitudes).

    H = X^T X is positive semi-definite in exact arithmetic, but accumulated in float32 from inputs with
    massive activations (Qwen2.5's MLP, a few channels in the thousands) and fewer tokens than columns it
    can come out slightly indefinite, beyond what the damping covers: the damping is then raised tenfold
    until the factorisation succeeds, as SparseGPT does.
    """
    h = hessian.double()
    jitter = damp * float(h.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for _ in range(max_tries):
        factor, info = torch.linalg.cholesky_ex(h + jitter * eye)
        if info.item() == 0:
            return torch.cholesky_inverse(factor)
        jitter *= 10
    raise LLMPruneError("shrink: a layer's input Hessian stayed indefinite after raising the damping "
                        "a millionfold; use more calibration data (--nsamples) or --score wanda")


# The greedy choice removes this many rounds' worth of units at most: channels go in batches of
# n_remove / ROUNDS (a joint update per batch), so its cost stays a few matrix products per round.
ROUNDS = 32


def greedy_second_order(weight: torch.Tensor, stats: InputStatistics, groups: list[list[int]], n_remove: int,
                        clusters: list[int] | None = None, damp: float = 0.01, rounds: int = ROUNDS) -> list[int]:
    """Optimal-brain-surgeon choice of whole units with compensation (as ZipLM does).

    Removing unit S while the other inputs are re-fitted raises the layer's squared error by
    tr(W_S (Hinv_SS)^-1 W_S^T); the cheapest units are removed, W and Hinv are updated as if they were
    gone, and the next ones are chosen on the updated pair. Single channels go in ``rounds`` batches
    (one joint update each); multi-channel units (heads) one at a time, there are few of them.
    """
    # float32 throughout: the damped Hessian is well conditioned, and float64 doubles the cost of
    # the full-size updates that dominate this function on a CPU.
    hinv = damped_inverse(stats.hessian, damp).float()
    w = weight.float().clone()
    alive = [True] * len(groups)
    removed: list[int] = []
    singletons = all(len(group) == 1 for group in groups)
    per_round = max(1, -(-n_remove // rounds)) if singletons and clusters is None else 1
    column_of = torch.tensor([group[0] for group in groups]) if singletons else None
    while len(removed) < n_remove:
        take = min(per_round, n_remove - len(removed))
        if singletons and clusters is None:
            costs = w.pow(2).sum(0)[column_of] / hinv.diagonal()[column_of]
            costs[~torch.tensor(alive)] = float("inf")
            picks = [int(i) for i in torch.argsort(costs)[:take]]
        else:
            eligible = _eligible(alive, clusters)

            def cost(i: int) -> float:
                s = groups[i]
                return float(torch.trace(w[:, s] @ torch.linalg.solve(hinv[s][:, s], w[:, s].t())))

            picks = [min(eligible, key=cost)]
        s = torch.tensor([c for i in picks for c in groups[i]])
        block_inverse = torch.linalg.inv(hinv[s][:, s])
        rows = hinv[s, :]
        w.sub_((w[:, s] @ block_inverse) @ rows)
        hinv.sub_(hinv[:, s] @ (block_inverse @ rows))
        w[:, s] = 0.0
        for i in picks:
            alive[i] = False
        removed.extend(picks)
    return sorted(removed)


def choose_units(kind: str, weight: torch.Tensor, stats: InputStatistics | None, groups: list[list[int]], n_remove: int,
                 clusters: list[int] | None = None, producer_sq: torch.Tensor | None = None, damp: float = 0.01) -> list[int]:
    """Indices (into ``groups``) of the units to remove: each group lists its consumer input columns."""
    if n_remove <= 0:
        return []
    if kind == "obs":
        if stats is None:
            raise LLMPruneError("score 'obs' needs calibration statistics")
        return greedy_second_order(weight, stats, groups, n_remove, clusters, damp)
    per_channel = channel_scores(kind, weight, stats, producer_sq)
    unit_scores = torch.stack([per_channel[group].sum() for group in groups])
    return lowest_units(unit_scores, n_remove, clusters)
