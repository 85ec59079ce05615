"""The interface every pruning method implements, and the sparsity target it is asked to meet.

A method sees one linear layer at a time and knows nothing of models or blocks:
1. ``new_statistics(columns)`` makes an empty accumulator (or None if it needs no data);
2. ``update_statistics(stats, inputs)`` folds in a (tokens x columns) batch of layer inputs;
3. ``prune(weight, stats, target)`` returns which weights to keep and, optionally, new values
   for the survivors. ``stats`` is None when the layer saw no calibration data.
Layers that read the same input tensor share one statistics object, so a method must
not keep per-layer state in it.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import LLMPruneError


@dataclass(frozen=True)
class SparsityTarget:
    """Either a fraction of weights to remove, or N of every M consecutive inputs (N:M)."""

    sparsity: float
    n: int | None = None
    m: int | None = None

    @property
    def semi_structured(self) -> bool:
        return self.m is not None

    @property
    def pattern(self) -> str | None:
        return f"{self.n}:{self.m}" if self.semi_structured else None

    @classmethod
    def parse(cls, sparsity: float | None = None, pattern: str | None = None) -> "SparsityTarget":
        if sparsity is not None and pattern is not None:
            raise LLMPruneError("give either a sparsity or an N:M pattern, not both")
        if pattern is not None:
            match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
            if not match:
                raise LLMPruneError(f"malformed pattern '{pattern}': write N:M, e.g. 2:4")
            n, m = int(match.group(1)), int(match.group(2))
            if not 0 < n < m:
                raise LLMPruneError(f"impossible pattern '{pattern}': N:M prunes N of every M weights, so 0 < N < M")
            return cls(sparsity=n / m, n=n, m=m)
        if sparsity is None:
            raise LLMPruneError("give a sparsity (e.g. 0.5) or an N:M pattern (e.g. 2:4)")
        try:
            value = float(sparsity)
        except (TypeError, ValueError):
            raise LLMPruneError(f"sparsity must be a number in [0, 1), got '{sparsity}'") from None
        if not 0.0 <= value < 1.0:
            raise LLMPruneError(f"sparsity must be in [0, 1), got {value}")
        return cls(sparsity=value)

    def describe(self) -> str:
        return self.pattern if self.semi_structured else f"{self.sparsity:.0%} unstructured"


@dataclass
class PruneResult:
    keep: torch.Tensor  # bool, same shape as the weight; False = pruned
    weight: torch.Tensor | None = None  # new values for the kept weights, when the method updates them


class PruningMethod(ABC):
    """One pruning algorithm. Subclasses set ``name`` and implement ``prune``."""

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True
    # True when each output row's mask depends on that row alone and no values change, so the
    # engine may hand the method a slice of rows at a time (same result, less memory).
    row_separable: ClassVar[bool] = False

    def new_statistics(self, columns: int, device: torch.device) -> Any:
        return None

    def update_statistics(self, stats: Any, inputs: torch.Tensor) -> None:
        """``inputs`` is a (tokens x columns) float32 matrix of the layer's inputs."""

    @abstractmethod
    def prune(self, weight: torch.Tensor, stats: Any, target: SparsityTarget) -> PruneResult:
        """``weight`` is a float32 (rows x columns) copy the method may modify."""
