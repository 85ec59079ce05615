"""What block 0 receives: the embeddings' output and every other argument, captured once per chunk."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..anatomy import find_blocks
from ..errors import LLMPruneError


class _BlockInputsCaptured(Exception):
    """Raised inside block 0 to stop the model's forward once its inputs are recorded."""


@dataclass
class BlockInputs:
    """What one calibration chunk feeds a block: hidden states plus every other argument."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict[str, Any]


def block_output(output: Any) -> torch.Tensor:
    # Recent transformers blocks return a tensor; older ones a tuple led by the hidden states.
    return output[0] if isinstance(output, (tuple, list)) else output


def run_block(block: nn.Module, inputs: list[BlockInputs], after_call=None) -> list[torch.Tensor]:
    """The block's outputs for each chunk (``after_call()`` runs after each chunk's call)."""
    outputs = []
    for item in inputs:
        outputs.append(block_output(block(item.hidden, *item.args, **item.kwargs)))
        if after_call is not None:
            after_call()
    return outputs


def copy_inputs(inputs: list[BlockInputs]) -> list[BlockInputs]:
    """Fresh hidden states over the same keyword arguments, for a second sweep over the blocks."""
    return [BlockInputs(item.hidden.clone(), item.args, item.kwargs) for item in inputs]


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
