"""Compressed sparse safetensors in the compressed-tensors layouts, and reading them back.

Two layouts, both keyed by the module name ``M`` of a weight ``M.weight`` (the convention
compressed-tensors readers expect, so vLLM and friends can load our folders):

* ``sparse-bitmask`` (any pattern): ``M.compressed`` holds the non-zero values row by row
  (1-D, original dtype), ``M.bitmask`` (uint8, rows x ceil(cols/8)) marks where they sit,
  bits packed little-endian along each row, ``M.shape`` (int64 [rows, cols]) and
  ``M.row_offsets`` (int64 [rows]) the start of each row inside ``compressed``.
* ``sparse-24-bitmask`` (2:4 only): ``M.compressed`` is rows x cols/2, exactly two values
  per group of four, ``M.bitmask`` and ``M.shape`` as above.

A 3-D stack of expert matrices (gpt-oss saves its fused experts as they are) is compressed as the
2-D (experts x outputs, inputs) matrix of its experts one under the other: ``M.shape`` then holds
[experts, outputs, inputs], the tensor keeps its own name ``M`` (listed under ``stacked`` in the
sparsity config), and N:M groups run along each expert's inputs.

Zeros are found by value (``w != 0``), so a negative zero comes back as ``+0.0``; every
other bit pattern, NaN included, round-trips exactly.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import LLMPruneError

UNSTRUCTURED = "unstructured"
SPARSE_BITMASK = "sparse-bitmask"
SPARSE_24_BITMASK = "sparse-24-bitmask"
FORMAT_FOR_STRUCTURE = {UNSTRUCTURED: SPARSE_BITMASK, "2:4": SPARSE_24_BITMASK}
PARTS = ("compressed", "bitmask", "shape", "row_offsets")

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


# --- single tensors -------------------------------------------------------------------------

def pack_bitmask(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A 2-D bool mask as uint8 rows x ceil(cols/8), bit j of byte k = column 8k+j."""
    array = mask if isinstance(mask, np.ndarray) else mask.cpu().numpy()
    return torch.from_numpy(np.packbits(array, axis=-1, bitorder="little"))


def unpack_bitmask(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    bits = np.unpackbits(bitmask.cpu().numpy(), axis=-1, count=cols, bitorder="little")
    return torch.from_numpy(bits.view(np.bool_))


# The gathers and scatters run in numpy on integer views of the weights: numpy has no
# bfloat16, an integer view moves the exact bits of any float type, and numpy's
# compress / fancy assignment are several times faster than torch's boolean indexing
# on CPU (which decides whether sparse save+load keeps up with dense).
_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's raw bits as a numpy integer array (shares memory)."""
    return tensor.detach().cpu().contiguous().view(_INT_VIEW[tensor.element_size()]).numpy()


def _nonzero(bits: np.ndarray, is_float: bool) -> np.ndarray:
    """Where the value is not zero: for floats every bit but the sign counts, so -0.0 is a zero."""
    if not is_float:
        return bits != 0
    magnitude = np.iinfo(bits.dtype).max  # all bits but the sign bit
    return (bits & magnitude) != 0


def _check_2d(name: str, weight: torch.Tensor) -> None:
    if weight.dim() != 2:
        raise LLMPruneError(f"{name}: only 2-D weights can be stored sparse (got shape {list(weight.shape)})")


def _values(bits: np.ndarray, keep: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The kept entries, row-major, back in the weight's own dtype."""
    return torch.from_numpy(np.compress(keep.ravel(), bits.ravel())).view(dtype)


def compress_bitmask(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sparse-bitmask`` tensors for the weight of module ``name``."""
    _check_2d(name, weight)
    bits = _bits(weight)
    mask = _nonzero(bits, weight.is_floating_point())
    counts = torch.from_numpy(mask.sum(axis=1, dtype=np.int64))
    return {
        f"{name}.compressed": _values(bits, mask, weight.dtype),
        f"{name}.bitmask": pack_bitmask(mask),
        f"{name}.shape": torch.tensor(list(weight.shape), dtype=torch.int64),
        f"{name}.row_offsets": torch.cumsum(counts, 0) - counts,
    }


_LOW_NIBBLE_BITS = np.array([bin(b & 0x0F).count("1") for b in range(256)], dtype=np.uint8)
_HIGH_NIBBLE_BITS = np.array([bin(b >> 4).count("1") for b in range(256)], dtype=np.uint8)


def _group_counts(nonzero: np.ndarray) -> np.ndarray:
    """Non-zeros per group along the last axis (a small one: 4 or 8)."""
    # m strided adds: numpy reduces over a short inner axis several times slower.
    counts = nonzero[..., 0].astype(np.uint8)
    for j in range(1, nonzero.shape[-1]):
        counts += nonzero[..., j]
    return counts


def nm_violations(weight: torch.Tensor, n: int, m: int) -> int:
    """Groups of ``m`` consecutive inputs holding more than ``n`` non-zeros (-1: columns not a multiple of m)."""
    if weight.dim() != 2 or weight.shape[1] % m:
        return -1
    nonzero = _nonzero(_bits(weight), weight.is_floating_point()).reshape(weight.shape[0], -1, m)
    return int(np.count_nonzero(_group_counts(nonzero) > n))


def compress_24(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sparse-24-bitmask`` tensors; refuses a weight that is not 2:4 sparse."""
    _check_2d(name, weight)
    rows, cols = weight.shape
    if cols % 4:
        raise LLMPruneError(f"{name}: 2:4 format needs a column count divisible by 4 (got {cols})")
    bits = _bits(weight)
    nonzero = _nonzero(bits, weight.is_floating_point())
    packed = np.packbits(nonzero, axis=-1, bitorder="little")
    # Each packed byte holds two groups of four: count them with two lookup tables
    # instead of summing a (rows, cols/4, 4) array, which is several times slower.
    counts = np.stack((_LOW_NIBBLE_BITS[packed], _HIGH_NIBBLE_BITS[packed]), axis=-1).reshape(rows, -1)[:, : cols // 4]
    bad = int(np.count_nonzero(counts > 2))
    if bad:
        raise LLMPruneError(
            f"{name} is not 2:4 sparse: {bad} of {rows * cols // 4} groups of 4 hold more than 2 non-zeros "
            f"(prune it with --pattern 2:4, or save it with --save-format dense)"
        )
    keep = nonzero
    short = np.flatnonzero(counts.reshape(-1) < 2)
    if short.size:
        # The layout needs exactly two slots per group: keep the non-zeros, then fill the
        # group with its leftmost zeros (stored as the zero bits they are, so still exact).
        # Only the groups short of two are touched: they are few but not rare (weights
        # dequantised from 4-bit hold many exact zeros).
        keep = nonzero.copy()
        flat_groups = keep.reshape(-1, 4)
        groups = flat_groups[short]
        zero_rank = np.cumsum(~groups, axis=-1, dtype=np.int8)
        missing = (2 - counts.reshape(-1)[short].astype(np.int8))[:, None]
        flat_groups[short] = groups | (~groups & (zero_rank <= missing))
        packed = np.packbits(keep, axis=-1, bitorder="little")
    return {
        f"{name}.compressed": _values(bits, keep, weight.dtype).reshape(rows, cols // 2),
        f"{name}.bitmask": torch.from_numpy(packed),
        f"{name}.shape": torch.tensor([rows, cols], dtype=torch.int64),
    }


def decompress(parts: dict[str, torch.Tensor], name: str = "tensor") -> torch.Tensor:
    """The dense weight from its parts (keys without the module prefix); either layout, 2-D or a 3-D stack."""
    try:
        dims = [int(v) for v in parts["shape"].reshape(-1).tolist()]
        if len(dims) not in (2, 3):
            raise ValueError(f"shape {dims} is neither a matrix nor a stack of matrices")
        rows, cols = (dims[0] * dims[1], dims[2]) if len(dims) == 3 else dims
        values = parts["compressed"].reshape(-1)
        # as bool: numpy's nonzero has a fast path for bool arrays, ~20x quicker than on uint8
        mask = np.unpackbits(parts["bitmask"].numpy(), axis=-1, count=cols, bitorder="little").view(np.bool_)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise LLMPruneError(f"{name}: malformed compressed tensor ({type(exc).__name__}: {exc})") from None
    where = np.flatnonzero(mask)
    if mask.shape != (rows, cols) or where.size != values.numel():
        raise LLMPruneError(f"{name}: bitmask does not match its values ({where.size} bits set for {values.numel()} values)")
    # np.zeros gets pages the kernel zeroes on first touch; torch.zeros would write the
    # whole buffer once more before the scatter does.
    flat = np.zeros(rows * cols, dtype=_bits(values).dtype)
    flat[where] = _bits(values)  # row-major, the order the values were taken in
    return torch.from_numpy(flat).view(values.dtype).reshape(dims)


# --- choosing what to compress ---------------------------------------------------------------

def bitmask_bytes(weight: torch.Tensor) -> int:
    """Bytes the ``sparse-bitmask`` layout takes for this weight."""
    rows, cols = weight.shape
    nonzeros = int(torch.count_nonzero(weight))
    return nonzeros * weight.element_size() + rows * ((cols + 7) // 8) + 8 * rows + 16


def as_matrix(tensor: torch.Tensor, transposed: bool) -> tuple[torch.Tensor, list[int]]:
    """A weight as the (outputs x inputs) matrix the layouts store, and the shape to record: a 3-D
    stack of experts becomes its experts' matrices one under the other."""
    if transposed:
        tensor = tensor.transpose(-1, -2)
    shape = list(tensor.shape)
    return tensor.contiguous().reshape(-1, shape[-1]), shape


def compress_state_dict(
    state_dict: dict[str, torch.Tensor], targets: Iterable[str], structure: str = UNSTRUCTURED,
    transposed: Iterable[str] = (), stacked: Iterable[str] = (),
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(tensors to write, modules compressed, target modules left dense).

    ``targets`` are module names whose ``.weight`` should be compressed; ``stacked`` are the names of
    3-D expert stacks to compress (kept under their own name). Under the unstructured layout a weight
    that would not get smaller (a layer left dense) is stored as it is; under 2:4 every target must
    be 2:4 or the save is refused. ``transposed`` modules (or stacks) store their weight (inputs x
    outputs), as GPT-2's Conv1D or gpt-oss's experts: they are compressed as (outputs x inputs), so
    N:M groups run along the inputs as the layout means.
    """
    transposed = set(transposed)
    stacked = set(stacked)
    if structure not in FORMAT_FOR_STRUCTURE:
        raise LLMPruneError(f"unknown sparsity structure '{structure}' (use {', '.join(FORMAT_FOR_STRUCTURE)})")
    wanted = {f"{t}.weight" for t in targets}
    out: dict[str, torch.Tensor] = {}
    compressed, left_dense = [], []
    for key, tensor in state_dict.items():
        is_stack = key in stacked and tensor.dim() == 3
        if not is_stack and (key not in wanted or tensor.dim() != 2):
            out[key] = tensor
            continue
        module = key if is_stack else key[: -len(".weight")]
        tensor, shape = as_matrix(tensor, module in transposed)
        if structure == "2:4":
            out.update(compress_24(module, tensor))
            out[f"{module}.shape"] = torch.tensor(shape, dtype=torch.int64)
            compressed.append(module)
        else:
            parts = compress_bitmask(module, tensor)
            parts[f"{module}.shape"] = torch.tensor(shape, dtype=torch.int64)
            if sum(_nbytes(p) for p in parts.values()) < _nbytes(tensor):
                out.update(parts)
                compressed.append(module)
            else:  # a layer left dense would only grow by its bitmask
                out[key] = state_dict[key]
                left_dense.append(module)
    return out, compressed, left_dense


# --- folders ---------------------------------------------------------------------------------

def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def write_sharded(
    tensors: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> list[str]:
    """``model.safetensors``, or numbered shards plus ``model.safetensors.index.json``.

    The parts of one compressed weight stay in one shard so a reader can decompress
    it from a single file.
    """
    groups: dict[str, list[str]] = {}
    for key in tensors:
        stem, _, suffix = key.rpartition(".")
        groups.setdefault(stem if suffix in PARTS else key, []).append(key)
    shards: list[list[str]] = [[]]
    size = 0
    for keys in groups.values():
        group_bytes = sum(_nbytes(tensors[k]) for k in keys)
        if shards[-1] and size + group_bytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].extend(keys)
        size += group_bytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file({k: tensors[k].contiguous() for k in shards[0]}, folder / SAFE_WEIGHTS_NAME, metadata=metadata)
        return [SAFE_WEIGHTS_NAME]
    names, weight_map = [], {}
    for i, keys in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in keys}, folder / name, metadata=metadata)
        weight_map.update({k: name for k in keys})
        names.append(name)
    index = {"metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())}, "weight_map": weight_map}
    (folder / SAFE_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return names


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a model folder, in index order when there is an index."""
    folder = Path(folder)
    index = folder / SAFE_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise LLMPruneError(f"{index} is not a valid safetensors index ({exc})") from None
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(folder.glob("*.safetensors"))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise LLMPruneError(f"weight file missing: {missing[0]}")
    if not files:
        raise LLMPruneError(f"no .safetensors weights in {folder}")
    return files


def iter_dense_tensors(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, dense tensor) for every weight of a folder, decompressing one weight at a time.

    Only one dense copy of one weight is made at a time; the parts of a compressed
    weight may sit in different shards (other writers do not promise otherwise).
    """
    with contextlib.ExitStack() as stack:  # files close when the walk ends or is abandoned
        where: dict[str, object] = {}
        for path in weight_files(folder):
            handle = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
            for key in handle.keys():
                where[key] = handle
        parts_of: dict[str, dict[str, str]] = {}
        for key in where:
            stem, _, suffix = key.rpartition(".")
            if suffix in PARTS:
                parts_of.setdefault(stem, {})[suffix] = key
        compressed = {stem for stem, parts in parts_of.items() if "compressed" in parts and "bitmask" in parts}
        config = sparsity_config(folder) or {}
        transposed, stacked = set(config.get("transposed") or ()), set(config.get("stacked") or ())
        for key, handle in where.items():
            stem, _, suffix = key.rpartition(".")
            if stem not in compressed or suffix not in PARTS:
                yield key, handle.get_tensor(key)
            elif suffix == "compressed":
                parts = {part: where[k].get_tensor(k) for part, k in parts_of[stem].items()}
                yield dense_name(stem, stacked), restored(decompress(parts, stem), stem in transposed)


def dense_name(stem: str, stacked: set[str]) -> str:
    """The name a compressed weight has once dense: ``M.weight``, or its own name for an expert stack."""
    return stem if stem in stacked else f"{stem}.weight"


def restored(dense: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A decompressed (outputs x inputs) weight back in the axis order it is stored in."""
    return dense.transpose(-1, -2).contiguous() if transposed else dense


def sparsity_config(folder_or_config: str | Path | dict) -> dict | None:
    """The ``sparsity_config`` of a compressed-tensors folder (or config dict), else None."""
    if isinstance(folder_or_config, dict):
        config = folder_or_config
    else:
        path = Path(folder_or_config) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise LLMPruneError(f"{path} is not valid JSON ({exc})") from None
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") != "compressed-tensors":
        return None
    return quant.get("sparsity_config") or None


def quantization_config(structure: str, global_sparsity: float, targets: list[str], ignore: list[str],
                        transposed: list[str] = (), stacked: list[str] = ()) -> dict:
    """The ``quantization_config`` entry announcing the sparse layout in config.json.

    ``transposed`` (llmprune's own key, only when there are any) lists the modules compressed as the
    transpose of their stored weight; ``stacked`` (also llmprune's) the 3-D expert stacks compressed
    expert by expert, which keep their own tensor name.
    """
    fmt = FORMAT_FOR_STRUCTURE[structure]
    entry = {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "sparsity_config": {
            "format": fmt,
            "global_sparsity": round(float(global_sparsity), 6),
            "sparsity_structure": structure,
            "targets": targets,
            "ignore": ignore,
        },
        "config_groups": {},
    }
    if transposed:
        entry["sparsity_config"]["transposed"] = sorted(transposed)
    if stacked:
        entry["sparsity_config"]["stacked"] = sorted(stacked)
    return entry


# --- whole models ----------------------------------------------------------------------------

def _untied_state_dict(model) -> dict[str, torch.Tensor]:
    """The state dict without aliases (tied embeddings), keeping the names transformers reloads."""
    state_dict = model.state_dict()
    try:  # transformers knows which name of a tied pair it expects back
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        return remove_tied_weights_from_state_dict(state_dict, model)
    except ImportError:  # pragma: no cover - older transformers: keep the first name per storage
        seen: set[tuple[int, int]] = set()
        out = {}
        for key, tensor in state_dict.items():
            ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            if ident not in seen:
                seen.add(ident)
                out[key] = tensor
        return out


def pruned_tensors(model, report: dict) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """(what ``save_pretrained`` would write, each of its tensors holding pruned weights -> whether
    it is stored transposed).

    The pruned weights are the report's ``layers`` when given, else every prunable matrix of the
    blocks. The saved tensors are the model's after transformers' own conversion on save, so fused
    experts come out as the dense save writes them (one 2-D weight per expert for most families).
    """
    from ..anatomy import block_weights, find_blocks, router_weights
    from .conversion import saved_state, saved_tensors

    state_dict = _untied_state_dict(model)
    saved = saved_state(model, dict(state_dict))
    if set(saved) == set(state_dict):
        saved = state_dict  # no conversion: keep the state dict's own order
    layers = set(report.get("layers") or ())
    path, blocks = find_blocks(model)
    wanted: dict[str, bool] = {}
    for index, block in enumerate(blocks):
        prefix = f"{path}.{index}."
        candidates = {**block_weights(block), **(router_weights(block) if layers else {})}
        for name, weight in candidates.items():
            if not layers or prefix + name in layers:
                wanted[prefix + weight.tensor] = weight.transposed
    targets: dict[str, bool] = {}
    for tensor, transposed in wanted.items():
        if tensor in saved:
            targets[tensor] = transposed
        elif tensor in state_dict:  # converted on save: the 2-D per-expert weights are (outputs x inputs)
            targets.update({name: False for name in saved_tensors(model, tensor, state_dict[tensor].to("meta"))})
    return saved, targets


def structure_for_pattern(pattern: str | None) -> str:
    """The layout for a pruning pattern: 2:4 gets its own; anything else is stored as a bitmask."""
    return "2:4" if pattern and pattern.replace(" ", "") == "2:4" else UNSTRUCTURED


def save_sparse_model(
    model,
    folder: str | Path,
    report: dict | None = None,
    structure: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> dict:
    """Weights in the compressed layout, config.json (with ``quantization_config``), generation config.

    The pruned layers are the report's ``layers`` when given, else every linear layer of
    the blocks. Returns the ``quantization_config`` written.
    """
    from ..anatomy import is_linear

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = report or {}
    structure = structure or structure_for_pattern(report.get("pattern"))
    modules = dict(model.named_modules())
    state_dict, wanted = pruned_tensors(model, report)
    targets = [key[: -len(".weight")] for key in wanted if key.endswith(".weight") and state_dict[key].dim() == 2]
    stacked = [key for key in wanted if state_dict[key].dim() == 3]
    transposed = [key if key in stacked else key[: -len(".weight")] for key, flag in wanted.items() if flag]
    tensors, compressed, left_dense = compress_state_dict(state_dict, targets, structure, transposed, stacked)
    if not compressed:
        raise LLMPruneError("no layer got smaller in the sparse format (is the model pruned?); save it dense instead")
    write_sharded(tensors, folder, max_shard_bytes)

    # global_sparsity: the report's figure over the pruned layers when there is one,
    # else the share of zeros over the weights written compressed.
    sparsity = report.get("total_sparsity")
    if sparsity is None:
        # counted on the kept values: 2:4 groups may store a zero to fill their two slots
        total = sum(state_dict[dense_name(m, set(stacked))].numel() for m in compressed)
        kept = [tensors[f"{m}.compressed"] for m in compressed]
        nonzeros = sum(int(np.count_nonzero(_nonzero(_bits(v), v.is_floating_point()))) for v in kept)
        sparsity = 1 - nonzeros / total
    compressed_set = set(compressed)
    ignore = [name for name, module in modules.items() if is_linear(module) and name not in compressed_set]
    quant = quantization_config(structure, sparsity, ["Linear"], ignore,
                                [name for name in transposed if name in compressed_set],
                                [name for name in stacked if name in compressed_set])

    model.config.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = str(model.dtype).removeprefix("torch.")
    config["architectures"] = [type(model).__name__]
    config["quantization_config"] = quant
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(folder)
    return quant
