"""The block lifecycle, the same for every mode:

    capture the inputs of block 0
    (an allocation may first sweep the dense blocks, e.g. OWL's outlier ratios)
    for each block:  load -> gather statistics -> prune -> after-prune steps -> propagate -> write, release
    finalize: each step may edit the model or config and add to the report

In-memory and streaming runs differ only in their ``BlockHome``: where a block lives between
visits (already in memory, or read from the checkpoint on ``load`` and written and dropped on
``release``). Everything else is this one loop, so their outputs are identical by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..anatomy import LayerSelection, PrunableWeight, find_blocks, prunable_weights
from ..errors import LLMPruneError
from ..methods import PruningMethod, SparsityTarget
from .capture import BlockInputs, capture_block_inputs, copy_inputs, run_block
from .experts import ExpertPolicy
from .pruning import check_pattern_fits, prune_block


class BlockHome(Protocol):
    """Where the model's tensors live between visits."""

    label: str

    def load_outside(self) -> None:
        """Make the tensors outside the blocks that block 0's inputs need available."""

    def release_outside(self) -> None:
        """Done with the outside tensors (a streaming home writes and drops them)."""

    def load_block(self, index: int) -> None: ...

    def release_block(self, index: int, write: bool) -> None:
        """Done with block ``index``; ``write``: these are its final weights."""


class InMemory:
    """Every block is already in memory: nothing to load, nothing to write."""

    label = ""

    def load_outside(self) -> None:
        pass

    def release_outside(self) -> None:
        pass

    def load_block(self, index: int) -> None:
        pass

    def release_block(self, index: int, write: bool) -> None:
        pass


@dataclass
class BlockContext:
    """What an after-prune step sees of the block being pruned."""

    index: int
    block: nn.Module
    target: SparsityTarget
    inputs: list[BlockInputs] | None  # the block's calibration inputs (pruned stream), or None
    weights: dict[str, PrunableWeight] = field(default_factory=dict)  # filled once pruned

    def mask(self, name: str) -> torch.Tensor:
        """Which entries of weight ``name`` survive (True) after pruning."""
        return self.weights[name].matrix() != 0


class BlockStep:
    """An after-prune step (reconstruction, unit removal, ...). Override what you need."""

    name = "step"
    needs_inputs = False  # True: the step needs the calibration inputs even when the method does not

    def before_prune(self, context: BlockContext) -> None:
        """The block is loaded and still as it came (e.g. record its dense outputs)."""

    def after_prune(self, context: BlockContext) -> bool:
        """The block is pruned, its masks at hand; return True when weights changed, so the
        outputs passed on are computed again."""
        return False

    def finalize(self, model: nn.Module) -> dict | None:
        """After the last block; the returned entry goes into the report under ``name``."""
        return None


class Allocation(Protocol):
    """Gives each block its own target (uniform, OWL, depth ramp, ...: ``llmprune/allocation/``)."""

    name: str

    def allocate(self, lifecycle: "Lifecycle", dense_inputs: list[BlockInputs] | None, target: SparsityTarget,
                 selection: LayerSelection) -> tuple[dict, list[SparsityTarget]]:
        """(report sections by name, one target per block)."""
        ...


def propagate(inputs: list[BlockInputs], outputs: list[torch.Tensor]) -> None:
    """The block's outputs become the next block's inputs."""
    for item, output in zip(inputs, outputs):
        item.hidden = output


class Lifecycle:
    """One walk over the model's blocks, wherever they live."""

    def __init__(self, model: nn.Module, home: BlockHome | None = None, device: str | torch.device = "cpu", progress: bool = True,
                 experts: ExpertPolicy = ExpertPolicy()):
        self.model, self.home, self.device, self.progress = model, home or InMemory(), device, progress
        self.experts = experts  # where routed experts take their statistics from, in every sweep
        self.path, self.blocks = find_blocks(model)

    def sweep(self, desc: str, visit: Callable[[int, nn.Module], None], write: bool) -> None:
        """``visit(index, block)`` each block in turn, the block on the device while it is visited."""
        label = f" {self.home.label}" if self.home.label else ""
        for index, block in enumerate(tqdm(self.blocks, desc=desc + label, unit="block", disable=not self.progress)):
            self.home.load_block(index)
            resting = next(block.parameters()).device
            block.to(self.device)
            visit(index, block)
            block.to(resting)
            self.home.release_block(index, write)

    def capture(self, chunks: list[torch.Tensor] | None) -> list[BlockInputs] | None:
        """Block 0's inputs for each calibration chunk (None without chunks); the outside tensors are
        released afterwards in every case (a streaming home writes them then)."""
        self.home.load_outside()
        inputs = capture_block_inputs(self.model, chunks, self.device) if chunks else None
        self.home.release_outside()
        return inputs


@dataclass
class PruneOutcome:
    layers: dict[str, float]  # full weight name -> sparsity after pruning
    weights: dict[str, int]  # full weight name -> number of entries
    entries: dict[str, Any]  # report entries of the allocation and of the steps


@torch.no_grad()
def prune_model(
    lifecycle: Lifecycle,
    method: PruningMethod,
    target: SparsityTarget,
    chunks: list[torch.Tensor] | None,
    selection: LayerSelection = LayerSelection(),
    allocation: Allocation | None = None,
    steps: Sequence[BlockStep] = (),
) -> PruneOutcome:
    """The whole lifecycle: capture, (allocate), prune every block, finalize."""
    check_pattern_fits(lifecycle.blocks, lifecycle.path, target, selection)
    inputs = lifecycle.capture(chunks)
    entries: dict[str, Any] = {}
    block_targets = None
    if allocation is not None:
        allocated, block_targets = allocation.allocate(lifecycle, copy_inputs(inputs) if inputs else None, target, selection)
        entries.update(allocated)
        if len(block_targets) != len(lifecycle.blocks):
            raise LLMPruneError(f"{len(block_targets)} block targets given for {len(lifecycle.blocks)} blocks")
    block_inputs = inputs if method.needs_calibration or any(step.needs_inputs for step in steps) else None
    layers: dict[str, float] = {}
    sizes: dict[str, int] = {}
    routing: dict[str, dict] = {}

    def visit(index: int, block: nn.Module) -> None:
        context = BlockContext(index, block, target if block_targets is None else block_targets[index], block_inputs)
        for step in steps:
            step.before_prune(context)
        block_routing: dict[str, dict] = {}
        context.weights, outputs = prune_block(block, method, context.target, block_inputs, selection,
                                               lifecycle.experts, block_routing)
        routing.update({f"{lifecycle.path}.{index}.{name}": entry for name, entry in block_routing.items()})
        changed = [step.after_prune(context) for step in steps]
        if block_inputs and (any(changed) or outputs is None):  # None: the method pruned without inputs
            outputs = run_block(block, block_inputs)
        if outputs is not None:
            propagate(block_inputs, outputs)
        for name, weight in context.weights.items():
            layers[f"{lifecycle.path}.{index}.{name}"] = weight.sparsity()
            sizes[f"{lifecycle.path}.{index}.{name}"] = weight.numel()

    lifecycle.sweep(f"{method.name} {target.describe()}", visit, write=True)
    for step in steps:
        entry = step.finalize(lifecycle.model)
        if entry is not None:
            entries[step.name] = entry
    if routing:
        entries["experts"] = experts_entry(lifecycle.experts, routing)
    return PruneOutcome(layers, sizes, entries)


def experts_entry(policy: ExpertPolicy, routing: dict[str, dict]) -> dict:
    """The report's ``experts`` section: the policy, and per experts module its tokens and fallbacks."""
    fell_back = sum(len(entry["fell_back"]) for entry in routing.values())
    experts = sum(entry["experts"] for entry in routing.values())
    return {
        "statistics": policy.statistics,
        "min_tokens": policy.min_tokens,
        "fallback": policy.fallback,
        "experts": experts,
        "experts_fell_back": fell_back,
        "modules": routing,
    }


def prunable_weight_count(block: nn.Module, selection: LayerSelection = LayerSelection()) -> int:
    """Entries the selected weights of one block hold (what an allocation's mean is taken over)."""
    return sum(weight.numel() for weight in prunable_weights(block, selection).values())
