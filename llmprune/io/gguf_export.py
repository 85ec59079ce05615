"""GGUF output: any folder llmprune wrote (dense or sparse) as one GGUF file that llama.cpp runs.

``export_gguf(folder, "out.gguf", gguf_type="q8_0")`` reads the folder's tensors one at a time (a sparse
folder is decompressed weight by weight), renames them with the ``gguf`` package's ``TensorNameMap``,
changes their layout where llama.cpp's differs (``gguf_families``), converts them to the GGUF type and
writes the file with ``gguf.GGUFWriter`` (tensor data spooled to a temporary file, so the model is never
held whole). f32, f16, bf16 and q8_0 come from the ``gguf`` package; the K-quants (q4_k_m, q6_k) from
llama.cpp's own quantizer through llama-cpp-python, fed an f16 file first. The file appears complete or
not at all (temporary sibling, then rename).

Metadata: the architecture keys come from the folder's config (so a shrunk model's block count, MLP
width, head counts and head size are what llama.cpp reads); the tokenizer, chat template and description
come from the GGUF file the model was first loaded from when the folder's report names one
(``source_gguf``), else from the folder's Hugging Face tokenizer files.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
import torch

from ..errors import LLMPruneError
from .gguf_families import GGUFFamily, Metadata, family_for, hyperparameters
from .gguf_vocab import hf_tokenizer_metadata, source_metadata

REPORT_NAME = "llmprune_report.json"  # the writer's name for it; repeated here so io.writer can import this module


@dataclass(frozen=True)
class GGUFType:
    """One ``--gguf-type``: the file type llama.cpp records, and how a weight matrix is stored."""

    name: str
    file_type: gguf.LlamaFileType
    matrix: gguf.GGMLQuantizationType  # what the gguf package writes for 2-D weights
    llama_cpp: bool = False  # quantised by llama.cpp's own quantizer


GGUF_TYPES: dict[str, GGUFType] = {
    "f32": GGUFType("F32", gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": GGUFType("F16", gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": GGUFType("BF16", gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": GGUFType("Q8_0", gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
    # llama.cpp's quantizer makes these from an F16 file (its own mix: e.g. Q4_K_M keeps some tensors in Q6_K)
    "q6_k": GGUFType("Q6_K", gguf.LlamaFileType.MOSTLY_Q6_K, gguf.GGMLQuantizationType.Q6_K, llama_cpp=True),
    "q4_k_m": GGUFType("Q4_K_M", gguf.LlamaFileType.MOSTLY_Q4_K_M, gguf.GGMLQuantizationType.Q4_K, llama_cpp=True),
}


def parse_gguf_type(name: str) -> GGUFType:
    """The GGUF type named ``name`` (any case); a K-quant needs llama-cpp-python, checked here, before any work."""
    kind = GGUF_TYPES.get(str(name).lower())
    if kind is None:
        raise LLMPruneError(f"unknown GGUF type '{name}' (use {', '.join(GGUF_TYPES)})")
    if kind.llama_cpp:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise LLMPruneError(f"--gguf-type {name} uses llama.cpp's quantizer: install llama-cpp-python "
                                "(./scripts/setup.sh --llamacpp), or use f32, f16, bf16 or q8_0") from None
    return kind


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def source_gguf_of(spec: str | None, depth: int = 0) -> Path | None:
    """The GGUF file a model given as ``spec`` (alias, .gguf file, or a folder llmprune wrote) came from."""
    from .loading import ALIASES

    if not spec or depth > 8:
        return None
    bundled = ALIASES.get(str(spec).lower())
    if bundled is not None:
        try:
            path = bundled.source_file()
        except LLMPruneError:  # its package is gone: the report then names no source (never fail a save on it)
            return None
        return path.resolve() if path.suffix == ".gguf" and path.is_file() else None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path.resolve()
    if path.is_dir():
        report = read_json(path / REPORT_NAME)
        if report.get("source_gguf"):
            return Path(report["source_gguf"])
        return source_gguf_of(report.get("model"), depth + 1)
    return None


def _permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Interleave the two halves of each head's rows: llama.cpp's LLAMA rope rotates adjacent pairs."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class TensorConverter:
    """Hugging Face (name, tensor) -> (GGUF name, float32 array in llama.cpp's layout)."""

    def __init__(self, config, family: GGUFFamily):
        self.config = config
        self.family = family
        self.names = gguf.get_tensor_name_map(family.arch, int(config.num_hidden_layers))
        self.tied = bool(getattr(config, "tie_word_embeddings", False))

    def __call__(self, name: str, tensor: torch.Tensor) -> tuple[str, np.ndarray] | None:
        stem, _, suffix = name.rpartition(".")
        if self.tied and stem == "lm_head":
            return None  # llama.cpp reuses token_embd when there is no output tensor
        target = self.names.get_name(stem)
        if target is None or suffix not in ("weight", "bias"):
            raise LLMPruneError(f"tensor {name} has no llama.cpp name for the '{self.family.name}' architecture")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if self.family.rotary_pairs and suffix in ("weight", "bias"):
            if target.endswith(".attn_q"):
                array = _permute_rotary(array, int(self.config.num_attention_heads))
            elif target.endswith(".attn_k"):
                array = _permute_rotary(array, int(getattr(self.config, "num_key_value_heads", None)
                                                   or self.config.num_attention_heads))
        if self.family.norm_plus_one and target.endswith("norm") and suffix == "weight":
            array = array + 1.0
        return f"{target}.{suffix}", array


def encode(array: np.ndarray, kind: GGUFType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The bytes a tensor is stored as: vectors (norms, biases) stay F32, as in llama.cpp's converter; a
    matrix whose rows do not fill whole Q8_0 blocks of 32 falls back to F16."""
    if array.ndim < 2 or kind.matrix == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType.F32
    qtype = kind.matrix
    if qtype == gguf.GGMLQuantizationType.Q8_0 and array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(array, dtype=np.float16), qtype
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype), qtype


def folder_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The folder's weights one at a time (a sparse folder's decompressed weight by weight)."""
    from .sparse import iter_dense_tensors

    yield from iter_dense_tensors(folder)


def metadata(folder: Path, config, family: GGUFFamily, kind: GGUFType, source: Path | None) -> tuple[Metadata, object, str]:
    """Every key of the file, the special vocabulary to add (HF tokenizer only), and where the tokenizer came from."""
    fields: Metadata = {}
    special = None
    origin = None
    if source is not None:
        try:
            fields.update(source_metadata(source, family, int(config.vocab_size)))
            origin = f"source GGUF {source}"
        except (LLMPruneError, OSError, ValueError) as exc:
            print(f"llmprune: not reusing the source GGUF's tokenizer: {exc}".splitlines()[0], flush=True)
    if origin is None:
        tokenizer_fields, special = hf_tokenizer_metadata(folder, config.model_type, int(config.vocab_size))
        fields.update(tokenizer_fields)
        fields[gguf.Keys.General.NAME] = (folder.name, gguf.GGUFValueType.STRING)
        origin = f"tokenizer files in {folder}"
    fields.update(hyperparameters(config, family))  # the config's sizes replace the source's
    fields[gguf.Keys.General.FILE_TYPE] = (int(kind.file_type), gguf.GGUFValueType.UINT32)
    fields[gguf.Keys.General.QUANTIZATION_VERSION] = (gguf.GGML_QUANT_VERSION, gguf.GGUFValueType.UINT32)
    return fields, special, origin


def _add_metadata(writer: gguf.GGUFWriter, fields: Metadata) -> None:
    for key, (value, vtype) in fields.items():
        if isinstance(value, (list, tuple)):
            if value:
                writer.add_key_value(key, list(value), gguf.GGUFValueType.ARRAY, sub_type=vtype)
        else:
            writer.add_key_value(key, value, vtype)


def write_gguf(folder: Path, path: Path, kind: GGUFType, source: Path | None) -> dict:
    """Write the GGUF file at ``path`` (not atomically: the caller writes to a temporary name)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    family = family_for(config)
    fields, special, origin = metadata(folder, config, family, kind, source)
    convert = TensorConverter(config, family)
    writer = gguf.GGUFWriter(path, family.name, use_temp_file=True)
    counts: dict[str, int] = {}
    try:
        _add_metadata(writer, fields)
        if special is not None:
            special.add_to_gguf(writer, quiet=True)
        for name, tensor in folder_tensors(folder):
            converted = convert(name, tensor)
            if converted is None:
                continue
            target, array = converted
            data, qtype = encode(array, kind)
            writer.add_tensor(target, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
        if writer.temp_file is not None:
            writer.temp_file.close()
    return {"architecture": family.name, "tokenizer_from": origin, "tensor_types": counts}


@contextlib.contextmanager
def _quiet_native_output():
    """Silence what native code writes to the process's stdout and stderr (file descriptors 1 and 2)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def quantize_with_llama_cpp(source: Path, target: Path, kind: GGUFType, threads: int = 0) -> None:
    """llama.cpp's quantizer (the K-quant mixes) on an f16 GGUF file."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(kind.file_type)
    params.nthread = threads
    with _quiet_native_output():  # llama.cpp prints a line per tensor from C
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0 or not target.is_file():
        raise LLMPruneError(f"llama.cpp could not quantize to {kind.name} (status {status})")


def stored_types(path: Path) -> dict[str, int]:
    """How many tensors of each storage type a GGUF file holds."""
    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def check_gguf_output(output: str | Path, overwrite: bool = False) -> Path:
    """The output file must end in .gguf and not exist unless ``overwrite``: checked before any work."""
    target = Path(output).expanduser()
    if target.suffix.lower() != ".gguf":
        raise LLMPruneError(f"the GGUF output {target} must end in .gguf")
    if target.is_dir():
        raise LLMPruneError(f"output path {target} is a folder, not a .gguf file")
    if target.exists() and not overwrite:
        raise LLMPruneError(f"output file {target} already exists (pass --overwrite to replace it)")
    return target


def export_gguf(folder: str | Path, output: str | Path, gguf_type: str = "f16", overwrite: bool = False,
                source: str | Path | None = None) -> dict:
    """A folder llmprune wrote (dense or sparse), or a bundled model's alias, as one GGUF file; returns what was written.

    ``source``: the GGUF file whose tokenizer and description to keep (default: the one the folder's report
    names). The file is written to a temporary sibling and renamed: a failure leaves nothing behind.
    """
    from .loading import ALIASES, read_config, resolve_model_path

    kind = gguf_type if isinstance(gguf_type, GGUFType) else parse_gguf_type(gguf_type)
    target = check_gguf_output(output, overwrite)
    source_path = Path(source).expanduser() if source else source_gguf_of(str(folder))
    folder = Path(resolve_model_path(str(folder)) if str(folder).lower() in ALIASES else folder).expanduser()
    read_config(folder)  # one line for a folder that is not a model
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        written = scratch / ("f16.gguf" if kind.llama_cpp else target.name)
        info = write_gguf(folder, written, GGUF_TYPES["f16"] if kind.llama_cpp else kind, source_path)
        if kind.llama_cpp:
            quantized = scratch / target.name
            quantize_with_llama_cpp(written, quantized, kind)
            written.unlink()
            written = quantized
            info["tensor_types"] = stored_types(written)  # llama.cpp's mix, with its fallbacks for short rows
        os.chmod(written, 0o644)
        os.replace(written, target)
    except OSError as exc:
        raise LLMPruneError(f"could not write {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"path": str(target), "gguf_type": kind.name, "bytes": target.stat().st_size, **info}


def gguf_file_name(folder: Path, kind: GGUFType) -> str:
    """The file name inside a ``--save-format gguf`` output folder: the folder's name and the type, as GGUF repos do."""
    return f"{folder.name}-{kind.name}.gguf"


def write_gguf_folder(tmp: Path, final: Path, save_model_folder, gguf_type: str, report: dict | None) -> dict:
    """Fill the temporary output folder ``tmp`` (renamed to ``final`` by the caller) with one GGUF file.

    ``save_model_folder(path)`` writes the model as a Hugging Face folder; that folder is converted by the
    same tensor-by-tensor path as ``llmprune convert`` and removed. Used by ``--save-format gguf``.
    """
    kind = parse_gguf_type(gguf_type)
    staging = tmp / ".model"
    staging.mkdir()
    save_model_folder(staging)
    report = report or {}
    source = report.get("source_gguf") or source_gguf_of(report.get("model"))
    name = gguf_file_name(final, kind)
    info = export_gguf(staging, tmp / name, kind, overwrite=True, source=source)
    shutil.rmtree(staging)
    info["path"] = str(final / name)
    return info


def check_exportable(config) -> None:
    """Refuse, before any work, a model whose family or settings have no GGUF form llama.cpp reads."""
    hyperparameters(config, family_for(config))


def gguf_folder_from(folder: str | Path, output: str | Path, gguf_type: str = "f16", overwrite: bool = False) -> dict:
    """An output folder holding the GGUF form of ``folder`` and a copy of its report (``decompress --save-format gguf``)."""
    from .atomic import write_folder_atomically

    folder = Path(folder).expanduser()
    final = Path(output).expanduser()
    if final.resolve() == folder.resolve():
        raise LLMPruneError("the output folder must differ from the input folder")
    kind = parse_gguf_type(gguf_type)
    written: dict = {}

    def fill(tmp: Path) -> None:
        name = gguf_file_name(final, kind)
        written.update(export_gguf(folder, tmp / name, kind, overwrite=True))
        written["path"] = str(final / name)
        if (folder / REPORT_NAME).is_file():
            shutil.copy2(folder / REPORT_NAME, tmp / REPORT_NAME)

    write_folder_atomically(final, fill, overwrite=overwrite)
    return written
