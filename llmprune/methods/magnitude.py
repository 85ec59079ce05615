"""Magnitude pruning: drop the smallest |W| in each layer (or in each N:M group). Needs no data."""
from __future__ import annotations

from typing import Any

import torch

from . import masks
from .base import PruneResult, PruningMethod, SparsityTarget


class Magnitude(PruningMethod):
    name = "magnitude"
    needs_calibration = False

    def prune(self, weight: torch.Tensor, stats: Any, target: SparsityTarget) -> PruneResult:
        return PruneResult(keep=masks.select(weight.abs(), target, unstructured_group="layer"))
