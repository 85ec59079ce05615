"""The engine objects of a pruning job, built from its options (which stay torch-free).

``build`` is also the second half of a job's checks: what only the engine can judge (an N:M pattern, a
method's keywords, an allocation that an N:M pattern cannot take) fails here, still before the model loads.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..allocation import check_owl_options
from ..anatomy import LayerSelection
from ..engine import BlockStep, ExpertPolicy
from ..errors import LLMPruneError
from ..methods import PruningMethod, SparsityTarget, get_method
from ..options import DEFAULT_SPARSITY, PruneOptions
from ..reconstruct import BlockReconstruction


@dataclass(frozen=True)
class PruneParts:
    """What the engine runs for one pruning job."""

    method: PruningMethod
    target: SparsityTarget
    selection: LayerSelection
    experts: ExpertPolicy
    steps: list[BlockStep]  # the after-prune steps (block reconstruction)
    allocation: str  # uniform, owl, ramp or auto

    @property
    def needs_calibration(self) -> bool:
        return self.method.needs_calibration or self.allocation in ("owl", "auto") or bool(self.steps)


def sparsity_target(options: PruneOptions) -> SparsityTarget:
    sparsity = options.sparsity if (options.sparsity is not None or options.pattern) else DEFAULT_SPARSITY
    return SparsityTarget.parse(sparsity, options.pattern)


def after_prune_steps(options: PruneOptions) -> list[BlockStep]:
    """The after-prune steps this job asks for (block reconstruction)."""
    if not options.reconstruct:
        return []
    return [BlockReconstruction(options.reconstruct_target, options.reconstruct_parts, options.reconstruct_steps,
                                options.reconstruct_lr, options.reconstruct_batch_size, options.reconstruct_norms,
                                progress=options.progress, rollback=options.reconstruct_rollback,
                                loss=options.reconstruct_loss)]


def build(options: PruneOptions) -> PruneParts:
    """The engine objects of ``options`` (validated first); a value the engine refuses fails in one line."""
    options.validate()
    target = sparsity_target(options)
    allocation = options.allocation_name()
    check_owl_options(target, allocation == "owl", options.owl_m, options.owl_lambda)
    if allocation in ("ramp", "auto") and target.semi_structured:
        raise LLMPruneError(f"--allocation {allocation} gives blocks different sparsities, which an N:M pattern "
                            f"({target.pattern}) cannot; use --sparsity")
    experts = ExpertPolicy(options.expert_statistics, int(options.min_expert_tokens), options.expert_fallback)
    return PruneParts(get_method(options.method, **options.method_options), target,
                      LayerSelection.of(options.targets, options.ignore), experts, after_prune_steps(options), allocation)
