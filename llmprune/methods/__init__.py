"""Pruning methods, one per module, behind the interface in ``base``. Add a method by adding a file and a line here."""
from __future__ import annotations

from ..errors import LLMPruneError
from .admm import ADMM
from .base import PruneResult, PruningMethod, SparsityTarget
from .magnitude import Magnitude
from .ria import RIA
from .sparsegpt import SparseGPT
from .wanda import Wanda

METHODS: dict[str, type[PruningMethod]] = {cls.name: cls for cls in (Magnitude, Wanda, SparseGPT, RIA, ADMM)}


def get_method(name: str | PruningMethod, **options) -> PruningMethod:
    if isinstance(name, PruningMethod):
        return name
    if name not in METHODS:
        raise LLMPruneError(f"unknown method '{name}' (choose from {', '.join(METHODS)})")
    return METHODS[name](**options)


__all__ = ["METHODS", "PruneResult", "PruningMethod", "SparsityTarget", "get_method"]
