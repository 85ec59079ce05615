"""Block reconstruction: once a block is pruned, train its surviving weights so that its outputs match
the dense block's on the calibration inputs (EBFT, Guo et al. 2024; "A Free Lunch in LLM Compression", 2025).

An after-prune step of the block lifecycle (``engine.BlockStep``), so it follows every method, pattern
and allocation, in memory and streamed alike. Per block:

1. ``before_prune`` (the block is still dense): run it on the *source* inputs and record its outputs
   as targets, per micro-batch of calibration windows (and, with ``parts="separate"``, the outputs of
   each part: the attention module, the MLP module). The source is the target's choice:
   - ``teacher``: the dense model's own hidden states, a stream this step keeps and advances through
     every dense block, so the pruned model is pulled back towards the dense one and errors do not
     pile up silently;
   - ``local``: the pruned stream's inputs (what the engine feeds the block), so only this block's
     own error is corrected.
2. ``after_prune``: Adam on the surviving entries of the block's pruned matrices (and, with ``norms``,
   its normalisation weights), minimising the mean squared error to the targets; the pruned entries'
   gradients are zeroed and the mask re-applied after every step, so pruned weights are exactly zero
   throughout and Adam's moments cannot regrow them. With ``loss="token"`` each token's error counts
   relative to its target's norm instead (see ``training_loss``). ``separate`` trains one part at a time, in
   order, each against its own output (the forward stops there), a weight directly in the block
   (OPT's fc1/fc2) against the block's output.
3. With ``rollback`` (the default), a block whose held-out error is worse after training than
   before is rolled back to its untrained (pruned) weights; the report lists those blocks
   (``rolled_back_blocks``). Adam's step is about ``lr`` per weight whatever the loss scale, so a
   learning rate that suits one model's weights can wreck another's: SmolLM2-135M's matrices have
   an RMS near 0.2, Qwen2.5-1.5B's near 0.015, and 1e-3 that helps the first undid the second's
   outlier channels (its 2:4 run diverged).

The last windows (``HELD_OUT_SHARE`` of them, at least one when there are two or more) are never
trained on: the report gives each block's output error on them before and after training, relative
to the targets' mean square.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .anatomy import PrunableWeight, block_weights
from .engine import BlockContext, BlockInputs, BlockStep
from .engine.capture import block_output
from .errors import LLMPruneError
from .options import check_reconstruct_options

HELD_OUT_SHARE = 1 / 8
BLOCK = "block"  # the name of the block's own output among the recorded targets


# ---------------------------------------------------------------- micro-batches of windows

@dataclass(frozen=True)
class MicroBatch:
    """Windows ``start:stop`` of calibration chunk ``chunk``."""

    chunk: int
    start: int
    stop: int


def held_out_count(windows: int) -> int:
    """How many of ``windows`` calibration windows are held out: ``HELD_OUT_SHARE``, at least one of two or more."""
    return max(1, round(windows * HELD_OUT_SHARE)) if windows >= 2 else 0


def plan_micro_batches(inputs: list[BlockInputs], batch_size: int) -> tuple[list[MicroBatch], list[MicroBatch]]:
    """(training, held-out) micro-batches: the last ``HELD_OUT_SHARE`` of the windows are held out."""
    windows = [(chunk, row) for chunk, item in enumerate(inputs) for row in range(item.hidden.shape[0])]
    held = held_out_count(len(windows))
    split = len(windows) - held

    def group(part: list[tuple[int, int]]) -> list[MicroBatch]:
        batches: list[MicroBatch] = []
        for chunk, row in part:
            last = batches[-1] if batches else None
            if last and last.chunk == chunk and last.stop == row and last.stop - last.start < batch_size:
                batches[-1] = MicroBatch(chunk, last.start, row + 1)
            else:
                batches.append(MicroBatch(chunk, row, row + 1))
        return batches

    return group(windows[:split]), group(windows[split:])


def _slice_windows(value: Any, batch: MicroBatch, windows: int, dtype: torch.dtype | None) -> Any:
    """``value`` (an argument of the block) restricted to the micro-batch's windows; floating tensors
    cast to ``dtype``. A tensor is indexed by window when it has two or more dimensions and its first
    is the chunk's window count (hidden states, masks, per-window rotary tables); others are shared."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == windows and windows > 1:
            value = value[batch.start : batch.stop]
        return value.to(dtype) if dtype is not None and value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_slice_windows(v, batch, windows, dtype) for v in value)
    if isinstance(value, list):
        return [_slice_windows(v, batch, windows, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _slice_windows(v, batch, windows, dtype) for k, v in value.items()}
    return value


def batch_inputs(inputs: list[BlockInputs], batch: MicroBatch, hidden: torch.Tensor | None = None,
                 dtype: torch.dtype | None = None) -> BlockInputs:
    """The block's inputs for one micro-batch (``hidden``: other hidden states for the same chunk)."""
    item = inputs[batch.chunk]
    windows = item.hidden.shape[0]
    source = item.hidden if hidden is None else hidden
    return BlockInputs(
        _slice_windows(source[batch.start : batch.stop], batch, windows, dtype),
        _slice_windows(item.args, batch, windows, dtype),
        _slice_windows(item.kwargs, batch, windows, dtype),
    )


# ---------------------------------------------------------------- parts of a block

class _PartDone(Exception):
    """Raised by a part's output hook: the rest of the block is not needed for this loss."""


@dataclass
class Part:
    """A group of the block's weights trained together against one output: a child module's
    (``module`` set) or the whole block's (``module`` None)."""

    name: str
    module: nn.Module | None
    weights: list[PrunableWeight] = field(default_factory=list)


def block_parts(block: nn.Module, weights: dict[str, PrunableWeight], separate: bool) -> list[Part]:
    """The parts, in the order of the block's weights: one part for the whole block, or one per child
    module of the block that holds pruned weights (weights directly in the block form a part of their
    own, trained against the block's output)."""
    if not separate:
        return [Part(BLOCK, None, list(weights.values()))]
    children = dict(block.named_children())
    parts: dict[str, Part] = {}
    for name, weight in weights.items():
        child = name.split(".", 1)[0]
        key = child if "." in name and child in children else BLOCK
        if key not in parts:
            parts[key] = Part(key, children[key] if key != BLOCK else None)
        parts[key].weights.append(weight)
    return list(parts.values())


def norm_parameters(block: nn.Module) -> list[nn.Parameter]:
    """The block's normalisation weights and biases (LayerNorm, RMSNorm and their family variants)."""
    found: dict[int, nn.Parameter] = {}
    for module in block.modules():
        if "norm" in type(module).__name__.lower():
            for parameter in module.parameters(recurse=False):
                found.setdefault(id(parameter), parameter)
    return list(found.values())


def run_part(block: nn.Module, part: Part | None, item: BlockInputs) -> dict[str, torch.Tensor]:
    """Run the block on one micro-batch; returns the block's output (``BLOCK``) and, with ``part``,
    only that part's output (the forward stops right after it)."""
    if part is None or part.module is None:
        return {BLOCK: block_output(block(item.hidden, *item.args, **item.kwargs))}
    recorded: dict[str, torch.Tensor] = {}

    def record(module, args, output):
        recorded[part.name] = block_output(output)
        raise _PartDone

    handle = part.module.register_forward_hook(record)
    try:
        block(item.hidden, *item.args, **item.kwargs)
    except _PartDone:
        pass
    finally:
        handle.remove()
    if part.name not in recorded:
        raise LLMPruneError(f"block part {part.name} was never called in the block's forward")
    return recorded


def run_recording(block: nn.Module, parts: list[Part], item: BlockInputs) -> dict[str, torch.Tensor]:
    """Run the whole block once; returns its output and every module part's output."""
    recorded: dict[str, torch.Tensor] = {}
    handles = []
    for part in parts:
        if part.module is not None:
            def record(module, args, output, name=part.name):
                recorded[name] = block_output(output)
            handles.append(part.module.register_forward_hook(record))
    try:
        recorded[BLOCK] = block_output(block(item.hidden, *item.args, **item.kwargs))
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def token_errors(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each token's squared error relative to its target's squared norm (the last dimension is the hidden one)."""
    scale = target.pow(2).sum(-1).clamp_min(torch.finfo(target.dtype).tiny)
    return (output - target).pow(2).sum(-1) / scale


def training_loss(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """What Adam minimises: ``mse`` over every entry, or ``token``: the mean of the per-token relative errors.
    In a model with massive activations (Qwen2.5: a few entries of the first token thousands of times the
    rest) the plain MSE is almost all those entries, and training on it leaves the other tokens as they were."""
    if loss == "token":
        return token_errors(output, target).mean()
    return torch.nn.functional.mse_loss(output, target)


def relative_error(output: torch.Tensor, target: torch.Tensor, loss: str = "mse") -> tuple[float, float]:
    """(numerator, denominator) of the held-out error, in float64, to pool over micro-batches: for ``mse``
    the sum of squared errors and of the target's squares; for ``token`` the sum of the per-token relative
    errors and the number of tokens."""
    output, target = output.double(), target.double()
    if loss == "token":
        errors = token_errors(output, target)
        return float(errors.sum()), float(errors.numel())
    return float((output - target).pow(2).sum()), float(target.pow(2).sum())


# ---------------------------------------------------------------- the step

class BlockReconstruction(BlockStep):
    """Train each pruned block's surviving weights to reproduce the dense block's outputs."""

    name = "reconstruct"
    needs_inputs = True

    # No defaults here: they live in options.PruneOptions (reconstruct_*), the one place for them.
    # ``masked=False``: every entry of the block's matrices trains (a shrunk block has no pruning mask:
    # its removed units are gone from the tensors, and a weight that happens to be 0 may move).
    def __init__(self, target: str, parts: str, steps: int, lr: float, batch_size: int, norms: bool,
                 progress: bool = True, masked: bool = True, rollback: bool = True, loss: str = "mse"):
        check_reconstruct_options(target, parts, steps, lr, batch_size, loss)
        self.target, self.parts, self.steps, self.lr, self.loss = target, parts, int(steps), float(lr), loss
        self.batch_size, self.norms, self.progress, self.masked = int(batch_size), norms, progress, masked
        self.rollback = rollback
        self.teacher: list[torch.Tensor] | None = None  # the dense model's hidden states, per chunk
        self.targets: list[dict[str, torch.Tensor]] = []  # per micro-batch (training, then held-out)
        self.plan: tuple[list[MicroBatch], list[MicroBatch]] = ([], [])
        self.blocks: list[dict] = []
        self.seconds = 0.0

    # The dense block is run on the source inputs now; its outputs (and its parts') are the targets.
    @torch.no_grad()
    def before_prune(self, context: BlockContext) -> None:
        if not context.inputs:
            raise LLMPruneError("block reconstruction needs calibration inputs, and this run has none")
        started = time.perf_counter()
        inputs = context.inputs
        if self.target == "teacher" and self.teacher is None:  # block 0: the dense and the pruned streams agree
            self.teacher = [item.hidden.clone() for item in inputs]
        self.plan = plan_micro_batches(inputs, self.batch_size)
        # The weights to be pruned are not known yet: record every part that holds a matrix.
        parts = block_parts(context.block, block_weights(context.block), self.parts == "separate")
        teacher = self.target == "teacher"
        advanced = [hidden.clone() for hidden in self.teacher] if teacher else None
        self.targets = []
        for batch in self.plan[0] + self.plan[1]:
            source = self.teacher[batch.chunk] if teacher else None
            recorded = run_recording(context.block, parts, batch_inputs(inputs, batch, source))
            self.targets.append({name: value.detach().clone() for name, value in recorded.items()})
            if teacher:
                advanced[batch.chunk][batch.start : batch.stop] = recorded[BLOCK].to(advanced[batch.chunk].dtype)
        if teacher:
            self.teacher = advanced  # the dense model's inputs to the next block
        self.seconds += time.perf_counter() - started

    def after_prune(self, context: BlockContext) -> bool:
        started = time.perf_counter()
        block = context.block
        train, held = self.plan
        trained_targets, held_targets = self.targets[: len(train)], self.targets[len(train):]
        parts = block_parts(block, context.weights, self.parts == "separate")
        # Train in float32 whatever the model's dtype; the block goes back to its dtype afterwards.
        dtype = next(block.parameters()).dtype
        block.to(torch.float32)
        requires_grad = {id(p): p.requires_grad for p in block.parameters()}
        trains = bool(self.steps and train)
        try:
            before = self._held_out_error(block, context.inputs, held, held_targets)
            # Kept to roll back to: training that makes the held-out error worse is undone.
            untrained = ({name: p.detach().clone() for name, p in block.named_parameters()}
                         if trains and held and self.rollback else None)
            losses = []
            claimed_norms: set[int] = set()
            for part in parts:
                if trains:
                    losses.append(self._train_part(context, part, train, trained_targets, claimed_norms))
            after = trained = self._held_out_error(block, context.inputs, held, held_targets)
            kept = untrained is None or after is None or before is None or after <= before
            if not kept:
                with torch.no_grad():
                    for name, parameter in block.named_parameters():
                        parameter.copy_(untrained[name])
                after = before
        finally:
            for parameter in block.parameters():
                parameter.requires_grad_(requires_grad[id(parameter)])
                parameter.grad = None
            block.to(dtype)
        entry = {"block": context.index, "held_out_error_before": before, "held_out_error_after": after,
                 "kept": kept}
        if not kept:
            entry["held_out_error_trained"] = trained
        if losses:
            entry["train_loss_last"] = losses[-1] if len(losses) == 1 else losses
        self.blocks.append(entry)
        self.targets = []
        self.seconds += time.perf_counter() - started
        return trains and kept

    def _train_part(self, context: BlockContext, part: Part, train: list[MicroBatch],
                    targets: list[dict[str, torch.Tensor]], claimed_norms: set[int]) -> float:
        """Adam on the part's surviving weights (and unclaimed norms); returns the last step's loss."""
        block = context.block
        masked = {}
        for weight in part.weights:  # several weights may share one parameter (fused experts)
            parameter = weight.parameter
            masked.setdefault(id(parameter), (parameter, parameter.detach() != 0 if self.masked else None))
        norms = [p for p in norm_parameters(block) if id(p) not in claimed_norms] if self.norms else []
        trainable = [p for p, _ in masked.values()] + norms
        for parameter in block.parameters():
            parameter.requires_grad_(False)
        for parameter in trainable:
            parameter.requires_grad_(True)
        optimiser = torch.optim.Adam(trainable, lr=self.lr)
        label = f"reconstruct block {context.index}" + ("" if part.name == BLOCK else f" {part.name}")
        bar = tqdm(range(self.steps), desc=label, unit="step", leave=False, disable=not self.progress)
        loss_value = float("nan")
        key = part.name if part.module is not None else BLOCK
        for step in bar:
            index = step % len(train)
            item = batch_inputs(context.inputs, train[index], dtype=torch.float32)
            optimiser.zero_grad(set_to_none=True)
            with torch.enable_grad():
                output = run_part(block, part, item)[key]
                loss = training_loss(output, targets[index][key].to(output.dtype), self.loss)
                loss.backward()
            for parameter, keep in masked.values():
                if parameter.grad is not None and keep is not None:
                    parameter.grad.masked_fill_(~keep, 0.0)
            optimiser.step()
            with torch.no_grad():
                for parameter, keep in masked.values():
                    if keep is not None:
                        parameter.masked_fill_(~keep, 0.0)
            loss_value = float(loss)
            bar.set_postfix(loss=f"{loss_value:.4g}")
        bar.close()
        claimed_norms.update(id(p) for p in norms if p.grad is not None)
        return loss_value

    @torch.no_grad()
    def _held_out_error(self, block: nn.Module, inputs: list[BlockInputs], held: list[MicroBatch],
                        targets: list[dict[str, torch.Tensor]]) -> float | None:
        """The block's output error on the held-out windows, relative to the targets' (``relative_error``)."""
        if not held:
            return None
        error = scale = 0.0
        for batch, target in zip(held, targets):
            output = run_part(block, None, batch_inputs(inputs, batch, dtype=torch.float32))[BLOCK]
            e, s = relative_error(output, target[BLOCK], self.loss)
            error, scale = error + e, scale + s
        return error / scale if scale else None

    def finalize(self, model: nn.Module) -> dict:
        befores = [b["held_out_error_before"] for b in self.blocks if b["held_out_error_before"] is not None]
        afters = [b["held_out_error_after"] for b in self.blocks if b["held_out_error_after"] is not None]
        train, held = self.plan
        return {
            "target": self.target,
            "parts": self.parts,
            "loss": self.loss,
            "steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "norms": self.norms,
            "rollback": self.rollback,
            "held_out_windows": sum(b.stop - b.start for b in held),
            "train_windows": sum(b.stop - b.start for b in train),
            "mean_held_out_error_before": sum(befores) / len(befores) if befores else None,
            "mean_held_out_error_after": sum(afters) / len(afters) if afters else None,
            "rolled_back_blocks": [b["block"] for b in self.blocks if not b["kept"]],
            "seconds": round(self.seconds, 3),
            "blocks": self.blocks,
        }
