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
        if id(tensor) not in in_blocks:
            tensor.data = tensor.data.to(device)


@torch.no_grad()
def capture_block_inputs(model: nn.Module, chunks: list[torch.Tensor], device) -> list[BlockInputs]:
    """Run the embeddings on each chunk and record what block 0 receives, stopping there."""
    _, blocks = find_blocks(model)
    home = next(model.parameters()).device
    _move_outside_blocks(model, blocks, device)
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
        # Layers fed the same tensor (q/k/v, gate/up) share one statistics object. The tensor
        # itself is held for the duration of one forward call so its address cannot be reused.
        self._seen_this_call: dict[tuple, tuple[torch.Tensor, Any]] = {}
        self._handles = [
            layer.register_forward_pre_hook(self._make_hook(name)) for name, layer in layers.items()
        ]

    def _make_hook(self, name: str) -> Callable:
        def hook(module, args):
            if name in self.pruned:
                return
            inputs = args[0]
            key = (inputs.data_ptr(), tuple(inputs.shape))
            if key not in self._seen_this_call:
                stats = self.stats.get(name)
                if stats is None:
                    stats = self.method.new_statistics(inputs.shape[-1], inputs.device)
                flat = inputs.reshape(-1, inputs.shape[-1]).float()
                self.method.update_statistics(stats, flat)
                self._seen_this_call[key] = (inputs, stats)
            self.stats.setdefault(name, self._seen_this_call[key][1])
            if self.prune_on_sight:
                self.prune_layer(name)

        return hook

    def end_call(self) -> None:
        self._seen_this_call.clear()

    def prune_layer(self, name: str) -> None:
        layer = self.layers[name]
        weight = _working_copy(layer)
        result = self.method.prune(weight, self.stats.get(name), self.target)
        new_weight = result.weight if result.weight is not None else weight
        set_weight_matrix(layer, new_weight.masked_fill(~result.keep, 0.0))
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


def _run_block(block: nn.Module, inputs: list[BlockInputs], after_call: Callable[[], None]) -> list[torch.Tensor]:
    outputs = []
    for item in inputs:
        outputs.append(_block_output(block(item.hidden, *item.args, **item.kwargs)))
        after_call()
    return outputs


def layer_sparsity(layer: nn.Module) -> float:
    weight = layer.weight.data
    return float((weight == 0).sum().item()) / weight.numel()


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
) -> dict[str, float]:
    """Prune every selected linear layer of every block in place; returns layer name -> sparsity."""
    path, blocks = find_blocks(model)
    check_pattern_fits(model, target, targets, ignore)
    needs_data = method.needs_calibration and chunks
    inputs = capture_block_inputs(model, chunks, device) if needs_data else None
    single_pass = needs_data and len(inputs) == 1
    sparsities: dict[str, float] = {}

    bar = tqdm(blocks, desc=f"{method.name} {target.describe()}", unit="block", disable=not progress)
    for index, block in enumerate(bar):
        home = next(block.parameters()).device
        block.to(device)
        layers = prunable_layers(block, targets, ignore)
        pruner = _BlockPruner(method, target, layers, prune_on_sight=single_pass) if needs_data else None
        if not needs_data:
            for name, layer in layers.items():
                weight = _working_copy(layer)
                result = method.prune(weight, None, target)
                set_weight_matrix(layer, weight.masked_fill(~result.keep, 0.0))
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
        for name, layer in layers.items():
            sparsities[f"{path}.{index}.{name}"] = layer_sparsity(layer)
        block.to(home)
    return sparsities
