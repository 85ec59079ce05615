"""Uniform allocation: every block gets the asked target (the default; nothing to report)."""
from __future__ import annotations

from ..methods import SparsityTarget


class Uniform:
    name = "uniform"

    def allocate(self, lifecycle, dense_inputs, target: SparsityTarget, selection) -> tuple[dict, list[SparsityTarget]]:
        """({}, the asked target for every block)."""
        return {}, [target] * len(lifecycle.blocks)
