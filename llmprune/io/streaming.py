"""Streaming: a model larger than memory, one decoder block at a time, straight from disk and back.

``StreamedModel`` is the block home the engine's lifecycle uses in streaming mode. The model is never
materialised whole. Its skeleton is built on the meta device (no weight
memory); the tensors outside the blocks (embeddings, positions, final norm) are mapped from the
input safetensors copy-on-write (only the pages a computation touches become resident: the
embedding rows of the calibration tokens), the calibration inputs of block 0 are captured, and the
tensors outside the blocks, lm_head included, are copied file to file into the output, never
loaded whole. Then each block is loaded, pruned and run by the same
lifecycle the in-memory mode uses (``engine.prune_model``), its tensors are written
into the output shards at their final offsets, and it is dropped again. Peak memory is about one
block, plus the calibration activations.

The output folder is byte for byte what the in-memory mode's ``save_pretrained`` writes: the
shard plan, file names and index come from the same transformers/huggingface_hub functions
applied to the meta skeleton, and each shard is laid out as ``safetensors`` lays it out
(header first, tensors sorted by alignment then name), so a tensor can be written at its place
the moment its block is done. Everything goes to a temporary sibling folder renamed at the end:
a run killed midway leaves no output folder, and the next run cleans up its leftovers.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
from torch import nn

from ..anatomy import find_blocks
from ..errors import LLMPruneError
from ..process import resolve_device, resolve_dtype, return_freed_memory
from .conversion import assembled, saved_state, saved_tensors
from .loading import resolve_model_path
from .sparse import PARTS, decompress, dense_name, restored, sparsity_config

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# safetensors' names for torch dtypes (the header's "dtype" field).
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
TORCH_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}
# A temporary output folder holds this file while a streaming run writes into it; a leftover
# whose process is gone is a run that was killed, and may be deleted.
OWNER_FILE = ".llmprune-stream-owner"
MAX_SHARD_SIZE = "50GB"  # save_pretrained's default, so the shard plan matches the in-memory mode
# Stream automatically when the model would take more than this share of the available memory.
AUTO_STREAM_SHARE = 0.7


# ---------------------------------------------------------------- reading the input checkpoint

class StoredTensor(NamedTuple):
    """Where a tensor's bytes lie in a safetensors file, and what they hold."""

    path: Path
    offset: int
    size: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class Checkpoint:
    """The safetensors files of a model folder: which file holds which tensor, read via memory maps."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = folder / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        elif (folder / SINGLE_FILE).is_file():
            from safetensors import safe_open

            with safe_open(folder / SINGLE_FILE, framework="pt") as handle:
                weight_map = {key: SINGLE_FILE for key in handle.keys()}
        else:
            raise LLMPruneError(f"{folder}: {unstreamable_reason(folder)}")
        self.file_of: dict[str, str] = weight_map
        self._headers: dict[str, tuple[int, dict[str, Any]]] = {}
        # A folder in llmprune's sparse layout holds M.compressed, M.bitmask, ... for a weight M.weight:
        # the weight is listed under its own name and decompressed when read.
        config = sparsity_config(folder) or {}
        self.transposed = set(config.get("transposed") or ())
        stacked = set(config.get("stacked") or ())
        self.parts_of: dict[str, dict[str, str]] = {}
        for key in weight_map:
            stem, _, suffix = key.rpartition(".")
            if suffix in PARTS:
                self.parts_of.setdefault(dense_name(stem, stacked), {})[suffix] = key
        self.parts_of = {name: parts for name, parts in self.parts_of.items() if {"compressed", "bitmask"} <= set(parts)}
        for name, parts in self.parts_of.items():
            self.file_of[name] = weight_map[parts["compressed"]]

    def size_bytes(self) -> int:
        return sum((self.folder / name).stat().st_size for name in set(self.file_of.values()))

    def header(self, filename: str) -> tuple[int, dict[str, Any]]:
        """(where the data starts, the header's entries) of one shard file, read once."""
        if filename not in self._headers:
            self._headers[filename] = read_header(self.folder / filename)
        return self._headers[filename]

    def place(self, key: str) -> StoredTensor | None:
        """Where the tensor ``key`` lies when it is stored as itself (not in the sparse layout), else None."""
        if key in self.parts_of or key not in self.file_of:
            return None
        start, entries = self.header(self.file_of[key])
        entry = entries[key]
        dtype = TORCH_DTYPES.get(entry["dtype"])
        if dtype is None:
            return None
        begin, end = entry["data_offsets"]
        return StoredTensor(self.folder / self.file_of[key], start + begin, end - begin, dtype, tuple(entry["shape"]))

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The tensors ``keys``. A tensor stored as itself comes back as a private (copy-on-write)
        memory map of its bytes: only the pages a computation touches become resident (the embedding
        rows of the calibration tokens, not the whole table), and pruning in place copies just the
        pages it changes, never the file. Sparse-layout weights are decompressed into memory."""
        from safetensors import safe_open

        tensors = {}
        by_file: dict[str, list[str]] = {}
        for key in keys:
            place = self.place(key)
            if place is not None:
                tensors[key] = mapped_tensor(place)
                continue
            for stored in self.parts_of[key].values() if key in self.parts_of else (key,):
                by_file.setdefault(self.file_of[stored], []).append(stored)
        for name, file_keys in by_file.items():
            with safe_open(self.folder / name, framework="pt", device="cpu") as handle:
                for key in file_keys:
                    tensors[key] = handle.get_tensor(key)
        for key in keys:
            if key in self.parts_of:
                parts = {part: tensors.pop(stored) for part, stored in self.parts_of[key].items()}
                stem = next(iter(self.parts_of[key].values())).rpartition(".")[0]
                tensors[key] = restored(decompress(parts, key), stem in self.transposed)
        return tensors


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(byte offset of the data, header entries without ``__metadata__``) of a safetensors file."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


def mapped_tensor(stored: StoredTensor) -> torch.Tensor:
    """The tensor over ``stored``'s bytes, mapped copy-on-write (writes stay private to this process)."""
    import numpy as np

    if stored.size == 0:
        return torch.empty(stored.shape, dtype=stored.dtype)
    data = torch.from_numpy(np.memmap(stored.path, dtype=np.uint8, mode="c", offset=stored.offset, shape=(stored.size,)))
    return data.view(stored.dtype).reshape(stored.shape)


def header_bytes_in_memory(folder: Path, dtype: torch.dtype) -> int:
    """What the checkpoint's floating-point tensors take once loaded in ``dtype`` (read from the headers only)."""
    item = torch.empty((), dtype=dtype).element_size()
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
    total = 0
    for name in set(Checkpoint(folder).file_of.values()):
        for entry in read_header(folder / name)[1].values():
            count = 1
            for dim in entry["shape"]:
                count *= dim
            floating = entry["dtype"] in ("F64", "F32", "F16", "BF16")
            total += count * (item if floating else sizes.get(entry["dtype"], 8))
    return total


def should_stream(spec: str, dtype: str | None, device: str) -> bool:
    """True when ``spec`` is a local safetensors model too large for the memory available now."""
    import psutil

    torch_dtype = resolve_dtype(dtype, resolve_device(device))
    try:
        path = Path(resolve_model_path(spec, torch_dtype))  # a GGUF model: its cache folder in this dtype
    except LLMPruneError:
        return False
    if not path.is_dir() or not ((path / INDEX_FILE).is_file() or (path / SINGLE_FILE).is_file()):
        return False
    needed = header_bytes_in_memory(path, torch_dtype)
    return needed > AUTO_STREAM_SHARE * psutil.virtual_memory().available


def unstreamable_reason(folder: Path) -> str:
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        return "its weights are PyTorch pickles (.bin), which cannot be read tensor by tensor; streaming needs safetensors"
    if any(folder.glob("*.gguf")):
        return "it holds a .gguf file: pass the .gguf file itself (it is dequantised into a safetensors cache folder)"
    return "no model.safetensors or model.safetensors.index.json found; streaming needs safetensors"


def streamable_folder(spec: str, dtype: torch.dtype | None = None) -> Path:
    """The local folder holding ``spec``'s safetensors: a folder, an alias, a .gguf file (its cache folder
    in ``dtype``, dequantised tensor by tensor), or a hub id (cached or downloaded)."""
    path = Path(resolve_model_path(spec, dtype))
    if not path.is_dir():
        path = _hub_snapshot(str(spec))
    if not ((path / INDEX_FILE).is_file() or (path / SINGLE_FILE).is_file()):
        raise LLMPruneError(f"cannot stream {spec}: {unstreamable_reason(path)}")
    return path


def _hub_snapshot(repo_id: str) -> Path:
    """A hub model's cached snapshot (config, tokenizer, safetensors); downloaded when online."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise LLMPruneError(
            f"cannot stream '{repo_id}': not a local folder, not in the hub cache, and not downloadable now "
            f"({type(exc).__name__})"
        ) from None


# ---------------------------------------------------------------- the meta skeleton

def build_skeleton(folder: Path, dtype: torch.dtype) -> nn.Module:
    """The model with every weight on the meta device: exactly what ``from_pretrained`` builds
    (config, generation config, tied weights, key conversions) minus the weight memory."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.utils import logging as hf_logging

        config = AutoConfig.from_pretrained(folder)
        sparse = sparsity_config(folder) is not None
        if sparse and hasattr(config, "quantization_config"):
            del config.quantization_config  # llmprune's sparse layout is undone tensor by tensor (Checkpoint.read)
        verbosity = hf_logging.get_verbosity()
        if sparse:  # its compressed parts would be listed as unexpected keys; no weight is read here anyway
            hf_logging.set_verbosity_error()
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype, device_map="meta")
        finally:
            hf_logging.set_verbosity(verbosity)
        # The meta load leaves computed buffers (rotary frequencies, ...) on meta too; a model
        # built from the config on empty weights computes them for real, so take them from there.
        with init_empty_weights(include_buffers=False):
            donor = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except Exception as exc:
        raise LLMPruneError(f"cannot build {folder} for streaming: {exc}".splitlines()[0]) from None
    donor_buffers = dict(donor.named_buffers())
    for name, buffer in list(model.named_buffers()):
        if buffer.device.type == "meta" and name in donor_buffers and donor_buffers[name].device.type != "meta":
            _set_tensor(model, name, donor_buffers[name])
    if hasattr(model, "hf_device_map"):
        del model.hf_device_map
    model.eval()
    model.config.use_cache = False  # as load_causal_lm does, so config.json matches the in-memory mode
    return model


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attribute = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attribute


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module, attribute = _owner(model, name)
    if attribute in module._parameters:
        module._parameters[attribute] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[attribute] = value


class TensorPlaces:
    """Every state-dict name of the model, the places (module, attribute) that share its tensor,
    and the checkpoint key it is read from."""

    def __init__(self, model: nn.Module, checkpoint: Checkpoint):
        self.model = model
        state = model.state_dict(keep_vars=True)
        self.names = list(state)
        groups: dict[int, list[str]] = {}
        for name, tensor in state.items():
            groups.setdefault(id(tensor), []).append(name)
        self.aliases = {name: group for group in groups.values() for name in group}  # tied weights
        prefix = getattr(model, "base_model_prefix", "") or ""
        self.source: dict[str, str] = {}
        # Tensors stored converted (transformers fuses per-expert checkpoint weights on load):
        # name -> the checkpoint tensors it is assembled from, in place, on load.
        self.converted: dict[str, list[str]] = {}
        for name in self.names:
            for candidate in self.aliases[name] + [n.removeprefix(prefix + ".") for n in self.aliases[name]]:
                if candidate in checkpoint.file_of:
                    self.source[name] = candidate
                    break
            else:
                parts = list(saved_tensors(model, name, state[name])) if not _is_non_persistent(model, name) else []
                if parts and all(part in checkpoint.file_of for part in parts) and parts != [name]:
                    self.source[name] = name
                    self.converted[name] = parts
                elif not _is_non_persistent(model, name):
                    raise LLMPruneError(
                        f"cannot stream this checkpoint: no tensor for '{name}' in it (its tensors need a "
                        "conversion on load that streaming does not do); run without --stream"
                    )

    def load(self, checkpoint: Checkpoint, names: list[str]) -> None:
        """Read ``names`` from the checkpoint and put them in place, cast to the skeleton's dtypes."""
        wanted = [n for n in names if n in self.source]
        tensors = checkpoint.read(sorted({key for n in wanted for key in self.converted.get(n, [self.source[n]])}))
        done: set[str] = set()
        for name in wanted:
            if name in done:
                continue
            current = self.model.get_parameter(name) if _is_parameter(self.model, name) else self.model.get_buffer(name)
            if name in self.converted:
                made = assembled(self.model, {part: tensors.pop(part) for part in self.converted[name]})
                if name not in made:
                    raise LLMPruneError(f"cannot stream this checkpoint: its tensors {self.converted[name][0]}, ... do not "
                                        f"assemble into {name}; run without --stream")
                value = made[name]
            else:
                value = tensors[self.source[name]]
            if value.is_floating_point() and value.dtype != current.dtype:
                value = value.to(current.dtype)
            if tuple(value.shape) != tuple(current.shape):
                raise LLMPruneError(f"checkpoint tensor {self.source[name]} has shape {tuple(value.shape)}, the model wants {tuple(current.shape)}")
            for alias in self.aliases[name]:
                _set_tensor(self.model, alias, value)
                done.add(alias)

    def release(self, names: list[str]) -> None:
        """Put ``names`` back on the meta device, freeing their memory."""
        for name in names:
            if name not in self.source:
                continue  # computed buffers stay
            current = self.model.get_parameter(name) if _is_parameter(self.model, name) else self.model.get_buffer(name)
            empty = torch.empty_like(current, device="meta")
            for alias in self.aliases[name]:
                _set_tensor(self.model, alias, empty)


def output_head_names(model: nn.Module, places: TensorPlaces, outside: list[str]) -> list[str]:
    """The output head's own tensors (lm_head not tied to the embeddings): only written, never run."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return []
    prefix = next((name for name, module in model.named_modules() if module is head), None)
    if not prefix:
        return []
    return [n for n in outside if n.startswith(prefix + ".") and len(places.aliases[n]) == 1]


def _is_parameter(model: nn.Module, name: str) -> bool:
    module, attribute = _owner(model, name)
    return attribute in module._parameters


def _is_non_persistent(model: nn.Module, name: str) -> bool:
    module, attribute = _owner(model, name)
    return attribute in getattr(module, "_non_persistent_buffers_set", ())


# ---------------------------------------------------------------- writing the output shards

def safetensors_header(tensors: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The header bytes ``safetensors`` writes for these tensors, and each tensor's data offsets.

    safetensors orders tensors by alignment (element size, largest first) then by name, writes
    the JSON header compactly with ``__metadata__`` first, and pads it with spaces to 8 bytes.
    """
    ordered = sorted(tensors, key=lambda t: (-torch.empty((), dtype=t[1]).element_size(), t[0]))
    header: dict[str, Any] = {"__metadata__": metadata}
    offsets = {}
    position = 0
    for name, dtype, shape in ordered:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if dtype not in SAFETENSORS_DTYPES:
            raise LLMPruneError(f"cannot stream tensor {name} of dtype {dtype}")
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [position, position + size]}
        offsets[name] = (position, position + size)
        position += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offsets


class ShardWriter:
    """Output shard files laid out up front; tensors are written at their offsets in any order."""

    def __init__(self, folder: Path, plan: dict[str, list[str]], specs: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str]):
        self.places: dict[str, tuple[Path, int, int]] = {}
        for filename, names in plan.items():
            header, offsets = safetensors_header([(n, *specs[n]) for n in names], metadata)
            path = folder / filename
            with open(path, "wb") as handle:
                handle.write(header)
                handle.truncate(len(header) + max((end for _, end in offsets.values()), default=0))
            for name, (start, end) in offsets.items():
                self.places[name] = (path, len(header) + start, end - start)
        self.pending = set(self.places)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        path, offset, size = self.places[name]
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        if data.numel() != size:
            raise LLMPruneError(f"tensor {name} has {data.numel()} bytes, its place in {path.name} has {size}")
        with open(path, "r+b") as handle:
            handle.seek(offset)
            handle.write(data.numpy().data)
        self.pending.discard(name)

    def copy_bytes(self, name: str, source: Path, offset: int, size: int, chunk: int = 16 * 2**20) -> None:
        """Write ``name`` from ``size`` bytes of ``source`` at ``offset``, a chunk at a time (never whole in memory)."""
        path, place, expected = self.places[name]
        if size != expected:
            raise LLMPruneError(f"tensor {name} has {size} bytes, its place in {path.name} has {expected}")
        with open(source, "rb") as reader, open(path, "r+b") as handle:
            reader.seek(offset)
            handle.seek(place)
            left = size
            while left:
                data = reader.read(min(chunk, left))
                if not data:
                    raise LLMPruneError(f"{source.name} ends before tensor {name} does")
                handle.write(data)
                left -= len(data)
        self.pending.discard(name)

    def finish(self) -> None:
        if self.pending:
            raise LLMPruneError(f"streaming left {len(self.pending)} tensors unwritten, e.g. {sorted(self.pending)[0]}")


class OutputPlan:
    """What ``save_pretrained`` would write for this model: names, shards, index; computed on meta tensors."""

    def __init__(self, model: nn.Module):
        from huggingface_hub import split_torch_state_dict_into_shards
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = model.state_dict()  # meta tensors: names, dtypes and shapes only
        kept = remove_tied_weights_from_state_dict(state, model)
        ids = {id(tensor): name for name, tensor in kept.items()}
        saved = saved_state(model, kept)
        self.model_name: dict[str, str] = {}  # saved name -> the model's state-dict name
        self.converted: set[str] = set()  # model names saved as several rearranged tensors (MoE experts)
        for name, tensor in saved.items():
            if id(tensor) in ids:
                self.model_name[name] = ids[id(tensor)]
        for model_name in set(kept) - set(self.model_name.values()):
            for name in saved_tensors(model, model_name, kept[model_name]):
                self.model_name[name] = model_name
            self.converted.add(model_name)
        unknown = sorted(set(saved) - set(self.model_name))
        if unknown:
            raise LLMPruneError(
                f"cannot stream {type(model).__name__}: its saved tensors are converted from the loaded ones "
                f"(e.g. {unknown[0]}); run without --stream"
            )
        self.specs = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in saved.items()}
        # save_pretrained's own defaults: the pattern, the 50GB shard size, the index layout.
        split = split_torch_state_dict_into_shards(saved, filename_pattern="model{suffix}.safetensors", max_shard_size=MAX_SHARD_SIZE)
        self.files = split.filename_to_tensors
        self.index = None
        if split.is_sharded:
            self.index = {
                "metadata": {"total_parameters": model.num_parameters(), **split.metadata},
                "weight_map": split.tensor_to_filename,
            }
        self.saved_names_of: dict[str, list[str]] = {}
        for saved_name, model_name in self.model_name.items():
            self.saved_names_of.setdefault(model_name, []).append(saved_name)

    def open(self, folder: Path) -> ShardWriter:
        return ShardWriter(folder, self.files, self.specs, {"format": "pt"})

    def write_index(self, folder: Path) -> None:
        if self.index is not None:
            text = json.dumps(self.index, indent=2, sort_keys=True) + "\n"
            (folder / INDEX_FILE).write_text(text, encoding="utf-8")

    def write_tensors(self, writer: ShardWriter, model: nn.Module, names: list[str]) -> None:
        state = model.state_dict(keep_vars=True)
        for name in names:
            if name in self.converted:
                for saved_name, view in saved_tensors(model, name, state[name].detach()).items():
                    writer.write(saved_name, view)
                continue
            for saved_name in self.saved_names_of.get(name, []):
                writer.write(saved_name, state[name])


def write_model_files(model: nn.Module, folder: Path) -> None:
    """config.json and generation_config.json as ``save_pretrained`` writes them."""
    model.config.dtype = str(model.dtype).split(".")[1]
    model.config.architectures = [model.__class__.__name__]
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)


# ---------------------------------------------------------------- the atomic output folder

def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_outputs(target: Path) -> list[Path]:
    """Delete temporary folders of earlier streaming runs into ``target`` whose process is gone."""
    removed = []
    for candidate in target.parent.glob(f".{target.name}.tmp-*"):
        owner = candidate / OWNER_FILE
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            continue  # not a streaming run's folder, or not ours to judge
        if not _process_alive(pid):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C, so the temporary folder is removed."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- the block home

class StreamedModel:
    """A safetensors model opened for streaming: the meta skeleton, where each tensor comes from and
    where it goes. ``home(tmp)`` gives the engine a block home writing into the folder ``tmp``."""

    label = "(streaming)"

    def __init__(self, spec: str, dtype: torch.dtype):
        from transformers import AutoTokenizer

        self.folder = streamable_folder(spec, dtype)
        self.checkpoint = Checkpoint(self.folder)
        self.model = build_skeleton(self.folder, dtype)
        self.places = TensorPlaces(self.model, self.checkpoint)
        self.plan = OutputPlan(self.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        path, blocks = find_blocks(self.model)
        self.block_names = [[f"{path}.{i}.{name}" for name in block.state_dict()] for i, block in enumerate(blocks)]
        in_blocks = {name for names in self.block_names for name in names}
        outside = [name for name in self.places.names if name not in in_blocks]
        self.head = output_head_names(self.model, self.places, outside)
        self.early = [name for name in outside if name not in self.head]  # nothing before the blocks uses the head
        self.writer: ShardWriter | None = None

    def release_tokenizer(self) -> None:
        """Let the tokenizer go until ``finish`` (which reads it again from the folder to save it)."""
        self.tokenizer = None
        gc.collect()
        return_freed_memory()

    def output_bytes(self) -> int:
        return sum(torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size() for dt, shape in self.plan.specs.values())

    def open(self, tmp: Path) -> "StreamedModel":
        (tmp / OWNER_FILE).write_text(str(os.getpid()))
        self.writer = self.plan.open(tmp)
        return self

    # The BlockHome interface (see llmprune.engine.lifecycle).
    def load_outside(self) -> None:
        self.places.load(self.checkpoint, self.early)

    def release_outside(self) -> None:
        # Nothing outside the blocks changes: what is stored as the output stores it is copied file to
        # file, so the embedding table and the head never become resident whole.
        self.plan.write_tensors(self.writer, self.model, self.copy_unchanged(self.early))
        self.places.release(self.early)
        head = self.copy_unchanged(self.head)
        self.places.load(self.checkpoint, head)
        self.plan.write_tensors(self.writer, self.model, head)
        self.places.release(head)

    def copy_unchanged(self, names: list[str]) -> list[str]:
        """Copy the tensors of ``names`` stored with the output's dtype and shape byte for byte from the
        input; the names left to write from memory."""
        left = []
        for name in names:
            saved = self.plan.saved_names_of.get(name, [])
            place = None if name in self.places.converted else self.checkpoint.place(self.places.source.get(name, ""))
            if not saved or place is None or any(self.plan.specs[s] != (place.dtype, place.shape) for s in saved):
                left.append(name)
                continue
            for saved_name in saved:
                self.writer.copy_bytes(saved_name, place.path, place.offset, place.size)
        return left

    def load_block(self, index: int) -> None:
        self.places.load(self.checkpoint, self.block_names[index])

    def release_block(self, index: int, write: bool) -> None:
        if write:
            self.plan.write_tensors(self.writer, self.model, self.block_names[index])
        self.places.release(self.block_names[index])
        # The block's temporaries sit freed in the C heap, where the next block's weights
        # (memory-mapped reads) cannot reuse them; without this they add to its peak.
        return_freed_memory()

    def finish(self, tmp: Path) -> None:
        """Everything but the report: index, config, generation config, tokenizer."""
        self.writer.finish()
        self.plan.write_index(tmp)
        write_model_files(self.model, tmp)
        tokenizer = self.tokenizer
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.folder)
        tokenizer.save_pretrained(tmp)
        (tmp / OWNER_FILE).unlink()


@contextmanager
def streaming_output(destination: Path, overwrite: bool) -> Iterator[None]:
    """Around a streaming run into ``destination``: leftovers of killed runs removed, SIGTERM unwinds."""
    remove_stale_outputs(destination.absolute())
    with _terminate_as_interrupt():
        yield
