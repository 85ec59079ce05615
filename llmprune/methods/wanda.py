"""Wanda (Sun et al., 2024): score |W_ij| * ||X_j||_2, compared within each output row. No weight update."""
from __future__ import annotations

import torch

from . import masks
from .base import PruneResult, PruningMethod, SparsityTarget


SQUARES_ROWS = 4096


class Wanda(PruningMethod):
    name = "wanda"
    row_separable = True  # per-row comparison groups, both unstructured and N:M

    def new_statistics(self, columns: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(columns, dtype=torch.float32, device=device)  # running sum of squares per input

    def update_statistics(self, stats: torch.Tensor, inputs: torch.Tensor) -> None:
        # In slices of rows, so the squares never take a full copy of the (tokens x columns) input.
        for rows in inputs.split(SQUARES_ROWS):
            stats += rows.square().sum(dim=0)

    def prune(self, weight: torch.Tensor, stats: torch.Tensor | None, target: SparsityTarget) -> PruneResult:
        scores = weight.abs() if stats is None else weight.abs() * stats.sqrt().unsqueeze(0)
        return PruneResult(keep=masks.select(scores, target, unstructured_group="row"))
