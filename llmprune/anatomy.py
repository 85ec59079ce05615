"""What a model is made of, as far as pruning cares: where the decoder blocks are and which
weights inside them are prunable matrices.

Model-family knowledge lives here and only here, as data (``BLOCK_PATHS``); everything else is
found from the module structure, so a new family usually needs no code.

A ``PrunableWeight`` is the unit the engine, the report, the sparse writer and ``inspect`` talk
about: one (outputs x inputs) matrix, whatever its storage: an ``nn.Linear``, a GPT-2 ``Conv1D``
(stored transposed, inputs x outputs), or one expert's gate, up or down projection inside the fused
3-D parameters of a mixture-of-experts block (``expert``; a view, never a copy).

Mixture-of-experts blocks are found from the module structure: an *experts module* holds 3-D
parameters whose first axis is the number of experts (transformers 5 fuses the experts of a block
so), and an ``nn.ModuleList`` of identical MLPs is the older per-expert layout. A linear layer or
router sitting directly beside the experts (``mlp.gate``, ``mlp.router``, ``shared_expert_gate``)
is routing, never pruned unless ``--targets`` names it. How a family lays out its fused experts is
data (``EXPERT_LAYOUTS``); a family not in the table is read from the flags transformers sets on
every experts module (``is_transposed``, ``is_concatenated``, ``has_gate``, ``has_bias``).
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


@dataclass(frozen=True)
class ExpertLayout:
    """How one family stores its routed experts: 3-D parameters, experts on the first axis.

    ``input_projection`` holds each expert's gate and up rows (``gated``; halves [gate; up], or
    alternating rows when ``interleaved``) or only up rows; ``output_projection`` the down rows.
    ``transposed``: stored (experts, inputs, outputs) instead of (experts, outputs, inputs).
    """

    input_projection: str = "gate_up_proj"
    output_projection: str = "down_proj"
    gated: bool = True
    interleaved: bool = False
    transposed: bool = False
    input_bias: str | None = None
    output_bias: str | None = None

    def intermediate(self, module: nn.Module, expert: int, rows: torch.Tensor) -> torch.Tensor:
        """What expert ``expert``'s down projection reads for these input rows: act(gate) * up,
        computed from the module's current (possibly already pruned) weights, as its forward does."""
        weight = getattr(module, self.input_projection)[expert]
        out = rows @ weight if self.transposed else torch.nn.functional.linear(rows, weight)
        if self.input_bias:
            out = out + getattr(module, self.input_bias)[expert]
        if not self.gated:
            return module.act_fn(out)
        if hasattr(module, "_apply_gate"):  # transformers' own gating (gpt-oss clamps and offsets it)
            return module._apply_gate(out)
        gate, up = (out[..., ::2], out[..., 1::2]) if self.interleaved else out.chunk(2, dim=-1)
        return module.act_fn(gate) * up


# Class name of the experts module -> its layout (transformers 5.24). Families not listed are read
# from the flags transformers' ``use_experts_implementation`` sets on the module (see expert_layout).
EXPERT_LAYOUTS = {
    "MixtralExperts": ExpertLayout(),
    "Qwen2MoeExperts": ExpertLayout(),
    "Qwen3MoeExperts": ExpertLayout(),
    "DeepseekV3Experts": ExpertLayout(),
    "GptOssExperts": ExpertLayout(interleaved=True, transposed=True, input_bias="gate_up_proj_bias",
                                  output_bias="down_proj_bias"),
}
# model_type values whose saved expert tensors are (experts, inputs, outputs): read by `inspect` and
# the sparse writer, which see only tensors (the other families save (experts, outputs, inputs) or,
# through transformers' conversion on save, one 2-D weight per expert).
TRANSPOSED_EXPERT_FAMILIES = ("gpt_oss",)
# How a router's saved weight is named (inspect sees tensors only): in a folder that holds experts,
# these 2-D weights route tokens and are left dense by rule.
ROUTER_TENSOR = re.compile(r"\.(gate|router|shared_expert_gate)\.weight$")
# Names the parts of one expert get (the same names the older per-expert nn.Linear lists use, so
# --targets/--ignore globs such as 'mlp.experts.*.down_proj' mean the same in both layouts).
GATE, UP, DOWN = "gate_proj", "up_proj", "down_proj"


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

    name: str  # inside the block, e.g. "mlp.down_proj" or "mlp.experts.3.gate_proj"
    module: nn.Module
    transposed: bool = False  # stored (inputs x outputs), as GPT-2's Conv1D or gpt-oss's experts
    expert: int | None = None  # the expert it belongs to (fused 3-D parameter or per-expert list)
    parameter_name: str = "weight"  # the module's attribute that stores it
    rows: tuple[int, int | None, int] | None = None  # (start, stop, step) of its rows among the stored ones
    tensor: str = ""  # the stored tensor's state-dict name inside the block

    def __post_init__(self) -> None:
        if not self.tensor:  # a module of its own (fused experts name their shared tensor)
            object.__setattr__(self, "tensor", f"{self.name}.{self.parameter_name}")

    @property
    def parameter(self) -> torch.Tensor:
        return getattr(self.module, self.parameter_name)

    @property
    def fused(self) -> bool:
        """One expert inside a 3-D parameter: its inputs are the experts module's routed rows."""
        return self.parameter.dim() == 3

    def matrix(self) -> torch.Tensor:
        """The weight as (outputs, inputs), a view of the stored tensor."""
        data = self.parameter.data
        if data.dim() == 3:
            data = data[self.expert]
        if self.transposed:
            data = data.t()
        if self.rows is not None:
            data = data[slice(*self.rows)]
        return data

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


def expert_layout(module: nn.Module) -> ExpertLayout | None:
    """The layout of a fused experts module, or None when ``module`` is not one.

    An experts module holds 3-D parameters sharing their first axis (the number of experts); its
    layout comes from ``EXPERT_LAYOUTS``, else from the flags transformers sets on it.
    """
    stacked = [p for p in module.parameters(recurse=False) if p.dim() == 3]
    if len(stacked) < 2 or len({p.shape[0] for p in stacked}) != 1:
        return None
    layout = EXPERT_LAYOUTS.get(type(module).__name__)
    if layout is None:
        gated = bool(getattr(module, "has_gate", True))
        biased = bool(getattr(module, "has_bias", False))
        projection = "gate_up_proj" if gated else "up_proj"
        layout = ExpertLayout(
            input_projection=projection, gated=gated,
            interleaved=not getattr(module, "is_concatenated", True),
            transposed=bool(getattr(module, "is_transposed", False)),
            input_bias=f"{projection}_bias" if biased else None, output_bias="down_proj_bias" if biased else None,
        )
    for attribute in (layout.input_projection, layout.output_projection):
        parameter = getattr(module, attribute, None)
        if not isinstance(parameter, torch.Tensor) or parameter.dim() != 3:
            return None  # 3-D parameters of some other kind: not experts llmprune knows how to run
    return layout


def _fused_expert_weights(prefix: str, module: nn.Module, layout: ExpertLayout) -> dict[str, PrunableWeight]:
    """Each expert's gate, up and down matrices inside the fused parameters, expert by expert."""
    stored = getattr(module, layout.input_projection)
    experts = stored.shape[0]
    outputs = stored.shape[2] if layout.transposed else stored.shape[1]
    if layout.gated:
        half = outputs // 2
        parts = ((GATE, (0, None, 2)), (UP, (1, None, 2))) if layout.interleaved else ((GATE, (0, half, 1)), (UP, (half, None, 1)))
    else:
        parts = ((UP, None),)
    weights = {}
    for expert in range(experts):
        for part, rows in parts:
            name = f"{prefix}.{expert}.{part}"
            weights[name] = PrunableWeight(name, module, layout.transposed, expert, layout.input_projection, rows,
                                           f"{prefix}.{layout.input_projection}")
        name = f"{prefix}.{expert}.{DOWN}"
        weights[name] = PrunableWeight(name, module, layout.transposed, expert, layout.output_projection, None,
                                       f"{prefix}.{layout.output_projection}")
    return weights


def _two_d_weight(module: nn.Module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def _expert_lists(module: nn.Module) -> list[nn.ModuleList]:
    """The older per-expert layout among ``module``'s children: a ModuleList of at least two MLPs of
    one class, each with linear layers, beside a router with one output per expert."""
    lists = [child for child in module.children() if isinstance(child, nn.ModuleList) and len(child) >= 2
             and len({type(c) for c in child}) == 1 and any(is_linear(m) for m in child[0].modules())]
    outputs = {w.shape[0] for c in module.children() if (w := _two_d_weight(c)) is not None}
    return [child for child in lists if len(child) in outputs]


def _is_moe(module: nn.Module) -> bool:
    return bool(_expert_lists(module)) or any(expert_layout(child) is not None for child in module.children())


def _routers(block: nn.Module) -> dict[str, nn.Module]:
    """Modules beside the experts that hold a 2-D weight: routers and shared-expert gates."""
    routers = {}
    for name, module in block.named_modules():
        if not _is_moe(module):
            continue
        for child_name, child in module.named_children():
            if expert_layout(child) is None and _two_d_weight(child) is not None:
                routers[f"{name}.{child_name}" if name else child_name] = child
    return routers


def block_weights(block: nn.Module) -> dict[str, PrunableWeight]:
    """Every prunable matrix of one block, in execution (registration) order; routers are not among them."""
    routers = _routers(block)
    weights: dict[str, PrunableWeight] = {}
    expert_of: dict[str, int] = {}  # module name prefix of a per-expert list member -> its index
    for name, module in block.named_modules():
        lists = _expert_lists(module)
        for list_name, child in module.named_children():
            if any(child is found for found in lists):
                start = f"{name}.{list_name}" if name else list_name
                expert_of.update({f"{start}.{index}.": index for index in range(len(child))})
        layout = expert_layout(module)
        if layout is not None:
            weights.update(_fused_expert_weights(name, module, layout))
        elif is_linear(module) and name not in routers:
            expert = next((index for prefix, index in expert_of.items() if name.startswith(prefix)), None)
            weights[name] = PrunableWeight(name, module, transposed=is_transposed(module), expert=expert)
    return weights


def router_weights(block: nn.Module) -> dict[str, PrunableWeight]:
    """The routing matrices of a block (left dense unless --targets names them)."""
    return {name: PrunableWeight(name, module, transposed=is_transposed(module)) for name, module in _routers(block).items()}


def prunable_weights(block: nn.Module, selection: LayerSelection = LayerSelection()) -> dict[str, PrunableWeight]:
    """The block's prunable matrices that ``selection`` picks. Norms and embeddings are never among
    them; routers only when ``selection.targets`` names them explicitly."""
    chosen = {name: weight for name, weight in block_weights(block).items() if selection.selects(name)}
    if selection.targets:
        chosen.update({name: w for name, w in router_weights(block).items() if selection.selects(name)})
    return chosen


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


def stores_experts_transposed(model_type: str | None) -> bool:
    """Whether a family's saved 3-D expert tensors are (experts, inputs, outputs), from config.json alone."""
    return (model_type or "") in TRANSPOSED_EXPERT_FAMILIES


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """A linear layer's weight as (outputs, inputs), a view of the stored tensor whatever its convention."""
    return module.weight.data.t() if is_transposed(module) else module.weight.data


def model_max_length(model: nn.Module) -> int | None:
    config = model.config
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
