"""How much to prune each block: one file per allocation, each with ``allocate(lifecycle, dense_inputs,
target, selection) -> (report entries, per-block targets)`` (the engine's ``Allocation``).

    uniform.py  every block the asked target (the default)
    owl.py      outlier-weighted (OWL): blocks rich in Wanda-score outliers are pruned less
    ramp.py     sparsity rising linearly with depth
    auto.py     the best of the above by the loss on held-out calibration windows

A new allocation is one file here plus its name in ``ALLOCATIONS`` (options) and ``make_allocation``.
"""
from __future__ import annotations

from ..errors import LLMPruneError
from .limits import MAX_BLOCK_SPARSITY
from .owl import OWL, check_owl_options, owl_sparsities
from .ramp import DepthRamp, depth_ramp_allocation, depth_ramp_sparsities
from .uniform import Uniform

__all__ = ["MAX_BLOCK_SPARSITY", "OWL", "DepthRamp", "Uniform", "check_owl_options", "depth_ramp_allocation",
           "depth_ramp_sparsities", "make_allocation", "owl_sparsities"]


def make_allocation(name: str, *, owl_m: float = 5.0, owl_lambda: float = 0.08, ramp_step: float = 0.0):
    """The allocation called ``name`` (uniform, owl or ramp; ``auto`` needs calibration: ``auto.AutoAllocation``)."""
    if name == "owl":
        return OWL(owl_m, owl_lambda)
    if name == "ramp":
        return DepthRamp(ramp_step)
    if name == "uniform":
        return Uniform()
    raise LLMPruneError(f"no allocation called '{name}' here (uniform, owl, ramp; auto is built by the API)")
