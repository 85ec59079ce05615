"""Write a model folder llmprune wrote (dense or sparse) as one GGUF file for llama.cpp and the tools built on it.

Tensor names, metadata keys and the tokenizer follow llama.cpp's conventions for the architecture
(llama, mistral, qwen2, qwen3, gemma2, gemma3). A model first loaded from a GGUF file (the bundled models
are) keeps that file's tokenizer, chat template and description, with the sizes shrink changed (block
count, MLP width, head counts, head size) taken from the folder's config. The file is written to a
temporary name and renamed: a failed conversion leaves nothing behind.
"""
from __future__ import annotations

import argparse

from ..options import GGUF_TYPES

HELP = "write a folder llmprune wrote as one GGUF file (llama.cpp)"
EPILOG = """examples:
  llmprune convert out/llama-shrink-25 out/llama-shrink-25-f16.gguf
  llmprune convert llama out/smollm2-135m-f16.gguf                      # the bundled model, dense
  llmprune convert out/llama-shrink-25 out/llama-shrink-25-q8_0.gguf --gguf-type q8_0
  llmprune convert out/sparse-24 out/sparse-24-q4_k_m.gguf --gguf-type q4_k_m   # needs llama-cpp-python

--gguf-type: f32, f16, bf16 and q8_0 are written by the gguf package; q6_k and q4_k_m by llama.cpp's own
quantizer (llama-cpp-python; ./scripts/setup.sh --llamacpp installs it) from an f16 file.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a model folder llmprune wrote (dense or sparse), or a bundled model's alias (llama)")
    parser.add_argument("output", help="the GGUF file to write (ends in .gguf)")
    parser.add_argument("--gguf-type", default="f16", choices=GGUF_TYPES, help="how weight matrices are stored (default: f16)")
    parser.add_argument("--source-gguf", default=None, metavar="FILE",
                        help="the GGUF file whose tokenizer and description to keep (default: the one the folder's report names)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def run(args: argparse.Namespace) -> int:
    from ..api import convert

    written = convert(args.folder, args.output, args.gguf_type, overwrite=args.overwrite, source=args.source_gguf)
    types = ", ".join(f"{count} {kind}" for kind, count in written["tensor_types"].items())
    print(f"wrote {written['path']} ({written['architecture']}, {written['gguf_type']}, {written['bytes'] / 2**20:.1f} MiB; "
          f"tensors: {types}; tokenizer from {written['tokenizer_from']})")
    return 0
