"""Loading a model folder back, dense or in the compressed sparse layout, as a plain transformers model."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import LLMPruneError
from .sparse import iter_dense_tensors, sparsity_config

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        return DTYPE_NAMES.get(stored, "auto")
    if dtype not in DTYPE_NAMES:
        raise LLMPruneError(f"unknown dtype '{dtype}' (use {', '.join(DTYPE_NAMES)})")
    return DTYPE_NAMES[dtype]


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
    from .writer import check_output_dir, write_folder_atomically

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
