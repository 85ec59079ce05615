"""What a model is made of, as far as pruning cares: where the decoder blocks are and which
weights inside them are prunable matrices.

Model-family knowledge lives here and only here, as data (``BLOCK_PATHS``); everything else is
found from the module structure, so a new family usually needs no code.

A ``PrunableWeight`` is the unit the engine, the report, the sparse writer and ``inspect`` talk
about: one (outputs x inputs) matrix, whatever its storage. Today that is an ``nn.Linear`` or a
GPT-2 ``Conv1D`` (stored transposed, inputs x outputs); a view of one expert inside a fused 3-D
parameter fits the same shape (``expert``).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .errors import LLMPruneError

try:  # GPT-2 style models use a transposed linear layer
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()

# Attribute paths where decoder blocks live, tried in order before the generic search.
BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma, Phi-3
    "model.language_model.layers",  # multimodal wrappers (Gemma3, ...)
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon, BLOOM
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "transformer.blocks",  # MPT
)
BLOCK_LIST_NAMES = ("layers", "h", "blocks", "layer", "block", "decoder_layers")
# model_type values whose 2-D weights are stored (inputs x outputs): read by `inspect` and the
# sparse writer, which see only tensors, never modules.
TRANSPOSED_WEIGHT_FAMILIES = ("gpt2", "openai-gpt", "imagegpt", "decision_transformer")


def _get_attr_path(root: nn.Module, dotted: str):
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: a known attribute path, else the largest ModuleList with a block-like name."""
    for dotted in BLOCK_PATHS:
        blocks = _get_attr_path(model, dotted)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return dotted, blocks
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in BLOCK_LIST_NAMES and len(module) > 0
    ]
    if not candidates:
        raise LLMPruneError(f"cannot find the decoder blocks of {type(model).__name__} (no ModuleList of layers)")
    return max(candidates, key=lambda item: len(item[1]))


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def is_transposed(module: nn.Module) -> bool:
    return bool(Conv1D) and isinstance(module, Conv1D)


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable (outputs x inputs) matrix inside a block, and the module whose input feeds it."""

    name: str  # inside the block, e.g. "mlp.down_proj"
    module: nn.Module
    transposed: bool = False  # stored (inputs x outputs), as GPT-2's Conv1D
    expert: int | None = None  # index of the matrix inside a fused 3-D parameter (experts)

    @property
    def parameter(self) -> torch.Tensor:
        return self.module.weight

    def matrix(self) -> torch.Tensor:
        """The weight as (outputs, inputs), a view of the stored tensor."""
        data = self.parameter.data if self.expert is None else self.parameter.data[self.expert]
        return data.t() if self.transposed else data

    def set_matrix(self, matrix: torch.Tensor) -> None:
        self.matrix().copy_(matrix.to(self.parameter.dtype))

    def numel(self) -> int:
        return self.matrix().numel()

    def sparsity(self) -> float:
        matrix = self.matrix()
        # count_nonzero needs no temporary; (w == 0).sum() builds an int64 copy of the matrix.
        return 1.0 - int(torch.count_nonzero(matrix)) / matrix.numel()


@dataclass(frozen=True)
class LayerSelection:
    """Which of a block's weights to prune: globs over the name inside the block (``mlp.*``,
    ``q_proj``) or, with a ``re:`` prefix, regular expressions. Empty ``targets`` means all."""

    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    @classmethod
    def of(cls, targets: Iterable[str] | None = None, ignore: Iterable[str] | None = None) -> "LayerSelection":
        return cls(tuple(targets or ()), tuple(ignore or ()))

    def selects(self, name: str) -> bool:
        if self.targets and not _matches(name, self.targets):
            return False
        return not (self.ignore and _matches(name, self.ignore))


def _matches(name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.search(pattern[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.split(".")[-1], pattern):
            return True
    return False


def block_weights(block: nn.Module) -> dict[str, PrunableWeight]:
    """Every prunable matrix of one block, in execution (registration) order."""
    return {
        name: PrunableWeight(name, module, transposed=is_transposed(module))
        for name, module in block.named_modules()
        if is_linear(module)
    }


def prunable_weights(block: nn.Module, selection: LayerSelection = LayerSelection()) -> dict[str, PrunableWeight]:
    """The block's prunable matrices that ``selection`` picks. Norms and embeddings are never among them."""
    return {name: weight for name, weight in block_weights(block).items() if selection.selects(name)}


def model_weights(model: nn.Module, selection: LayerSelection = LayerSelection()) -> dict[str, PrunableWeight]:
    """Every selected prunable matrix of every block, keyed by its full module name."""
    path, blocks = find_blocks(model)
    return {
        f"{path}.{index}.{name}": weight
        for index, block in enumerate(blocks)
        for name, weight in prunable_weights(block, selection).items()
    }


def stores_transposed(model_type: str | None) -> bool:
    """Whether a family's saved 2-D weights are (inputs x outputs), judged from config.json alone."""
    return (model_type or "") in TRANSPOSED_WEIGHT_FAMILIES


def model_max_length(model: nn.Module) -> int | None:
    config = model.config
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
