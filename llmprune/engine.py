"""The sequential block runner: capture the inputs of block 0, then for each block gather
statistics, prune, and compute the block's outputs with the pruned weights for the next block.

Two schedules, chosen by how many chunks the calibration batch is split into:
- one chunk (the default when it fits in memory): every linear layer is pruned inside a
  forward pre-hook the moment its full input arrives, so one forward pass per block both
  gathers statistics and yields the pruned outputs; layers later in the block see inputs
  already shaped by the pruned layers before them (the "true sequential" variant);
- several chunks: a statistics pass over all chunks, prune every layer of the block, then
  a second pass for the outputs (the reference implementations' schedule).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import LLMPruneError
from .methods import PruningMethod, SparsityTarget
from .models import find_blocks, prunable_layers, set_weight_matrix, weight_matrix


class _BlockInputsCaptured(Exception):
    """Raised inside block 0 to stop the model's forward once its inputs are recorded."""


@dataclass
class BlockInputs:
    """What one calibration chunk feeds a block: hidden states plus every other argument."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict[str, Any]


def _to(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _block_output(output: Any) -> torch.Tensor:
    # Recent transformers blocks return a tensor; older ones a tuple led by the hidden states.
    return output[0] if isinstance(output, (tuple, list)) else output


def _move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device) -> None:
    """Move embeddings, rotary tables and the like (everything but the blocks) to ``device``."""
    in_blocks = {id(t) for t in blocks.parameters()} | {id(t) for t in blocks.buffers()}
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in in_blocks and tensor.device.type != "meta":  # streaming leaves unused ones unloaded
            tensor.data = tensor.data.to(device)


@torch.no_grad()
def capture_block_inputs(model: nn.Module, chunks: list[torch.Tensor], device) -> list[BlockInputs]:
    """Run the embeddings on each chunk and record what block 0 receives, stopping there."""
    _, blocks = find_blocks(model)
    home = next(model.parameters()).device
    _move_outside_blocks(model, blocks, device)
    # Block 0 only hosts the hook that stops the forward, its weights are never used; a streaming
    # run leaves it on the meta device here and loads it when its turn comes.
    block0_on_meta = next(blocks[0].parameters()).device.type == "meta"
    if not block0_on_meta:
        blocks[0].to(device)
    captured: list[BlockInputs] = []

    def record(module, args, kwargs):
        kwargs = dict(kwargs)
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        kwargs.pop("past_key_value", None)
        kwargs.pop("past_key_values", None)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append(BlockInputs(hidden, rest, kwargs))
        raise _BlockInputsCaptured

    handle = blocks[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        for chunk in chunks:
            try:
                model(input_ids=chunk.to(device), use_cache=False)
            except _BlockInputsCaptured:
                pass
    finally:
        handle.remove()
        if not block0_on_meta:
            blocks[0].to(home)
        _move_outside_blocks(model, blocks, home)
    if len(captured) != len(chunks):
        raise LLMPruneError(f"{type(model).__name__}: the first decoder block was never called")
    return captured


def check_pattern_fits(model: nn.Module, target: SparsityTarget, targets=None, ignore=None) -> None:
    """Fail before any work if a layer's input size is not a multiple of M."""
    if not target.semi_structured:
        return
    path, blocks = find_blocks(model)
    for index, block in enumerate(blocks):
        for name, layer in prunable_layers(block, targets, ignore).items():
            columns = weight_matrix(layer).shape[1]
            if columns % target.m:
                raise LLMPruneError(
                    f"layer {path}.{index}.{name} has {columns} inputs, not a multiple of M={target.m} "
                    f"for pattern {target.pattern}; exclude it with --ignore"
                )


class _BlockPruner:
    """Hooks on one block's linear layers: statistics per distinct input, pruning on demand."""

    def __init__(self, method: PruningMethod, target: SparsityTarget, layers: dict[str, nn.Module], prune_on_sight: bool):
        self.method, self.target, self.layers = method, target, layers
        self.prune_on_sight = prune_on_sight
        self.stats: dict[str, Any] = {}
        self.pruned: set[str] = set()
        # Layers fed the same tensor (q/k/v, gate/up) share one statistics object. A tensor is
        # recognised by its address while it is alive; only a weak reference is kept, so each
        # input is freed as soon as the block's own code drops it (holding them for the whole
        # call would keep every layer input of the block alive at once).
        self._seen_this_call: dict[tuple, tuple[weakref.ref, Any]] = {}
        self._handles = [
            layer.register_forward_pre_hook(self._make_hook(name)) for name, layer in layers.items()
        ]

    def _make_hook(self, name: str) -> Callable:
        def hook(module, args):
            if name in self.pruned:
                return
            inputs = args[0]
            key = (inputs.data_ptr(), tuple(inputs.shape))
            seen = self._seen_this_call.get(key)
            if seen is None or seen[0]() is None:  # a new tensor (perhaps at a freed one's address)
                stats = self.stats.get(name)
                if stats is None:
                    stats = self.method.new_statistics(inputs.shape[-1], inputs.device)
                flat = inputs.reshape(-1, inputs.shape[-1]).float()
                self.method.update_statistics(stats, flat)
                self._seen_this_call[key] = (weakref.ref(inputs), stats)
            self.stats.setdefault(name, self._seen_this_call[key][1])
            if self.prune_on_sight:
                self.prune_layer(name)

        return hook

    def end_call(self) -> None:
        self._seen_this_call.clear()

    def prune_layer(self, name: str) -> None:
        prune_layer_weights(self.layers[name], self.method, self.stats.get(name), self.target)
        self.pruned.add(name)
        self.stats.pop(name, None)

    def prune_rest(self) -> None:
        for name in self.layers:
            if name not in self.pruned:
                self.prune_layer(name)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _working_copy(layer: nn.Module) -> torch.Tensor:
    """A contiguous float32 (rows x columns) copy of a layer's weight for a method to work on."""
    return weight_matrix(layer).to(torch.float32, memory_format=torch.contiguous_format, copy=True)


# A row-separable method (see PruningMethod.row_separable) is given a slice of rows at a time:
# its float32 working copies then cost a slice instead of the whole matrix (for a 4096 x 11008
# layer about 1 GB of temporaries becomes about 40 MB), which keeps streaming's peak near one block.
ELEMENTS_PER_SLICE = 2**21


def prune_layer_weights(layer: nn.Module, method: PruningMethod, stats: Any, target: SparsityTarget) -> None:
    """Prune one layer in place: ask the method for a mask (and new values), zero the rest."""
    matrix = weight_matrix(layer)
    rows_per_slice = max(1, ELEMENTS_PER_SLICE // matrix.shape[1])
    if method.row_separable and matrix.shape[0] > rows_per_slice:
        for start in range(0, matrix.shape[0], rows_per_slice):
            rows = matrix[start : start + rows_per_slice]
            part = rows.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
            result = method.prune(part, stats, target)
            rows.copy_(part.masked_fill_(~result.keep, 0.0).to(rows.dtype))
        return
    weight = _working_copy(layer)
    result = method.prune(weight, stats, target)
    new_weight = result.weight if result.weight is not None else weight
    set_weight_matrix(layer, new_weight.masked_fill(~result.keep, 0.0))


def _run_block(block: nn.Module, inputs: list[BlockInputs], after_call: Callable[[], None]) -> list[torch.Tensor]:
    outputs = []
    for item in inputs:
        outputs.append(_block_output(block(item.hidden, *item.args, **item.kwargs)))
        after_call()
    return outputs


def layer_sparsity(layer: nn.Module) -> float:
    weight = layer.weight.data
    # count_nonzero needs no temporary; (weight == 0).sum() builds an int64 copy of the matrix.
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


@torch.no_grad()
def prune_block(
    block: nn.Module,
    method: PruningMethod,
    target: SparsityTarget,
    inputs: list[BlockInputs] | None,
    device: str | torch.device = "cpu",
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
) -> dict[str, float]:
    """Prune one block's selected linear layers in place; returns name inside the block -> sparsity.

    With ``inputs`` (the block's calibration inputs) the statistics come from them and each
    item's hidden states are replaced by the block's outputs with the pruned weights, ready for
    the next block; one input chunk means the fused single pass. Without, the method prunes
    from the weights alone. The block visits ``device`` and goes back where it was. Both the
    in-memory runner and the streaming runner call this, so their results are identical.
    """
    home = next(block.parameters()).device
    block.to(device)
    layers = prunable_layers(block, targets, ignore)
    needs_data = method.needs_calibration and bool(inputs)
    single_pass = needs_data and len(inputs) == 1
    pruner = _BlockPruner(method, target, layers, prune_on_sight=single_pass) if needs_data else None
    if not needs_data:
        for layer in layers.values():
            prune_layer_weights(layer, method, None, target)
    elif single_pass:
        outputs = _run_block(block, inputs, pruner.end_call)
        pruner.prune_rest()  # layers the forward never reached (e.g. unrouted experts)
    else:
        _run_block(block, inputs, pruner.end_call)
        pruner.prune_rest()
        pruner.remove()
        outputs = _run_block(block, inputs, lambda: None)
    if pruner is not None:
        pruner.remove()
        for item, output in zip(inputs, outputs):
            item.hidden = output
    sparsities = {name: layer_sparsity(layer) for name, layer in layers.items()}
    block.to(home)
    return sparsities


@torch.no_grad()
def gather_block_statistics(
    block: nn.Module,
    method: PruningMethod,
    inputs: list[BlockInputs],
    device: str | torch.device = "cpu",
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
) -> dict[str, tuple[nn.Module, Any]]:
    """Run one block unpruned on ``inputs``, folding each selected layer's inputs into ``method``'s
    statistics; returns name -> (layer, statistics or None). Each item's hidden states become the
    block's outputs, so the next block sees what the unpruned model feeds it."""
    home = next(block.parameters()).device
    block.to(device)
    layers = prunable_layers(block, targets, ignore)
    recorder = _BlockPruner(method, SparsityTarget(0.0), layers, prune_on_sight=False)
    try:
        outputs = _run_block(block, inputs, recorder.end_call)
    finally:
        recorder.remove()
    for item, output in zip(inputs, outputs):
        item.hidden = output
    block.to(home)
    return {name: (layer, recorder.stats.get(name)) for name, layer in layers.items()}


def copy_inputs(inputs: list[BlockInputs]) -> list[BlockInputs]:
    """Fresh hidden states over the same keyword arguments, for a second sweep over the blocks."""
    return [BlockInputs(item.hidden.clone(), item.args, item.kwargs) for item in inputs]


def prunable_weight_count(block: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None) -> int:
    """Weights the selected layers of one block hold (the weight OWL's mean is taken over)."""
    return sum(layer.weight.numel() for layer in prunable_layers(block, targets, ignore).values())


@torch.no_grad()
def prune_blocks(
    model: nn.Module,
    method: PruningMethod,
    target: SparsityTarget,
    chunks: list[torch.Tensor] | None,
    device: str | torch.device = "cpu",
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    progress: bool = True,
    block_targets: list[SparsityTarget] | None = None,
    inputs: list[BlockInputs] | None = None,
) -> dict[str, float]:
    """Prune every selected linear layer of every block in place; returns layer name -> sparsity.

    ``block_targets`` gives each block its own target (OWL); ``target`` then only names the run.
    ``inputs`` are already captured block-0 inputs (they are consumed), instead of capturing
    them from ``chunks``.
    """
    path, blocks = find_blocks(model)
    if block_targets is not None and len(block_targets) != len(blocks):
        raise LLMPruneError(f"{len(block_targets)} block targets given for {len(blocks)} blocks")
    check_pattern_fits(model, target, targets, ignore)
    needs_data = method.needs_calibration and (chunks or inputs)
    if needs_data and inputs is None:
        inputs = capture_block_inputs(model, chunks, device)
    sparsities: dict[str, float] = {}

    bar = tqdm(blocks, desc=f"{method.name} {target.describe()}", unit="block", disable=not progress)
    for index, block in enumerate(bar):
        block_target = target if block_targets is None else block_targets[index]
        result = prune_block(block, method, block_target, inputs if needs_data else None, device, targets, ignore)
        sparsities.update({f"{path}.{index}.{name}": value for name, value in result.items()})
    return sparsities
