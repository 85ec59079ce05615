"""Reading a GGUF file tensor by tensor, straight into the run dtype.

transformers' own GGUF path dequantises every tensor to float32 and holds them all (a 1.5B model
becomes a 6.7 GB float32 state dict before any cast). Here each tensor is dequantised by the
``gguf`` package (in row chunks, so its intermediates stay small), put through transformers' own
per-architecture tensor processor (e.g. Llama's q/k head permutation), named by transformers' own
GGUF -> model name map, cast to the run dtype and written to a safetensors shard; at most one shard
of run-dtype tensors and one float32 tensor exist at once. The folder written is the cache every
command then loads (in memory or streamed) like any safetensors model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import LLMPruneError
from ..process import return_freed_memory

# Output shards hold at most this many bytes: the conversion's own peak is about one shard plus
# one float32 tensor (the embedding, the largest), well under the model it writes.
SHARD_BYTES = 512 * 2**20
# Quantised tensors are dequantised this many rows at a time (the gguf package's numpy kernels
# make several temporaries the size of their input).
DEQUANT_ROWS = 4096
INDEX_FILE = "model.safetensors.index.json"


def _gguf_error(path: Path, exc: Exception) -> LLMPruneError:
    return LLMPruneError(f"cannot read GGUF file {path}: {type(exc).__name__}: {exc}".splitlines()[0])


class GgufTensors:
    """A GGUF file's tensors under the model's state-dict names, each read on demand in a dtype.

    The config and the name map come from transformers (its GGUF config reader, its
    ``get_gguf_hf_weights_map`` over the model built on the meta device, its tensor processors),
    so the weights match what ``from_pretrained(..., gguf_file=...)`` loads.
    """

    def __init__(self, path: str | Path):
        from gguf import GGUFReader
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        self.path = Path(path)
        try:
            self.reader = GGUFReader(str(self.path))
            self.config = AutoConfig.from_pretrained(self.path.parent, gguf_file=self.path.name)
            if hasattr(self.config, "quantization_config"):
                del self.config.quantization_config  # the folder written holds plain floats
            architecture = str(bytes(self.reader.fields["general.architecture"].parts[-1]), "utf-8")
            self.processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=self.config.to_dict())
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(self.config)
            name_map = get_gguf_hf_weights_map(skeleton, self.processor)
        except LLMPruneError:
            raise
        except Exception as exc:
            raise _gguf_error(self.path, exc) from None
        self.name_map = name_map
        self.architectures = [type(skeleton).__name__]
        self.shapes = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
        self.tensors = {t.name: t for t in self.reader.tensors}

    def dequantized(self, tensor) -> np.ndarray:
        """One GGUF tensor as float32, in its logical shape, dequantised a chunk of rows at a time."""
        from gguf import GGMLQuantizationType, dequantize

        data = tensor.data
        if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16) or data.ndim < 2:
            return dequantize(data, tensor.tensor_type)
        rows = data.shape[0]
        first = dequantize(data[:1], tensor.tensor_type)
        out = np.empty((rows,) + first.shape[1:], dtype=np.float32)
        for start in range(0, rows, DEQUANT_ROWS):
            out[start:start + DEQUANT_ROWS] = dequantize(data[start:start + DEQUANT_ROWS], tensor.tensor_type)
        return out

    def iter_tensors(self, dtype: torch.dtype, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(state-dict name, tensor in ``dtype``) for the file's tensors (or those named), one at a time."""
        wanted = None if names is None else set(names)
        for tensor in self.reader.tensors:
            if wanted is not None and self.name_map.get(tensor.name) not in wanted:
                continue
            parsed: dict = {"tensors": {}, "config": self.config.to_dict()}
            try:
                result = self.processor.process(
                    weights=self.dequantized(tensor), name=tensor.name,
                    tensor_key_mapping=self.name_map, parsed_parameters=parsed,
                )
            except Exception as exc:
                raise _gguf_error(self.path, exc) from None
            # Some processors (mixture-of-experts) place their tensors in parsed_parameters themselves.
            made = dict(parsed["tensors"])
            if result.weights is not None and result.name in self.name_map:
                made[self.name_map[result.name]] = result.weights
            for name, weights in made.items():
                if isinstance(weights, np.ndarray):
                    # Unquantised tensors come back as views of the read-only file map: copy them.
                    weights = weights if weights.flags.writeable and weights.flags.c_contiguous else np.array(weights)
                value = torch.from_numpy(weights) if isinstance(weights, np.ndarray) else weights
                expected = self.shapes.get(name)
                if expected is not None and tuple(value.shape) != expected:
                    value = value.reshape(expected)
                yield name, value.to(dtype) if value.is_floating_point() else value

    def bytes_in(self, dtype: torch.dtype) -> int:
        """What the dequantised tensors take in ``dtype``."""
        item = torch.empty((), dtype=dtype).element_size()
        return sum(int(t.n_elements) for t in self.reader.tensors) * item

    def tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
        except Exception as exc:
            raise _gguf_error(self.path, exc) from None


def write_gguf_folder(source: GgufTensors, folder: Path, dtype: torch.dtype) -> None:
    """Fill ``folder`` with the GGUF model as safetensors shards in ``dtype``, config and tokenizer.

    Called on a temporary folder (see ``convert_gguf``): the shards are written one at a time.
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    weight_map: dict[str, str] = {}
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = 0
    total = 0
    written: list[str] = []

    def flush() -> None:
        nonlocal pending, pending_bytes
        if not pending:
            return
        name = f"part-{len(written) + 1:05d}.safetensors"
        save_file(pending, str(folder / name), metadata={"format": "pt"})
        written.append(name)
        weight_map.update({key: name for key in pending})
        pending, pending_bytes = {}, 0
        return_freed_memory()

    for name, tensor in source.iter_tensors(dtype):
        size = tensor.numel() * tensor.element_size()
        if pending and pending_bytes + size > SHARD_BYTES:
            flush()
        pending[name] = tensor.contiguous()
        pending_bytes += size
        total += size
    flush()
    # transformers' own shard names, so the folder reads like any saved model.
    final = {old: (f"model-{i:05d}-of-{len(written):05d}.safetensors" if len(written) > 1 else "model.safetensors")
             for i, old in enumerate(written, start=1)}
    for old, new in final.items():
        (folder / old).rename(folder / new)
    if len(written) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in sorted(weight_map.items())}}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    config = source.config
    config.architectures = source.architectures
    config.dtype = str(dtype).removeprefix("torch.")
    config.save_pretrained(folder)
    GenerationConfig.from_model_config(config).save_pretrained(folder)
    source.tokenizer().save_pretrained(folder)
