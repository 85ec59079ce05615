"""Write a dense copy of a sparse model folder (compressed-tensors bitmask or 2:4 layout).

The copy holds ordinary safetensors that any transformers version loads; tokenizer files,
the pruning report and other files are copied as they are. With --save-format gguf the folder
holds one llama.cpp file instead (and the report).
"""
from __future__ import annotations

import argparse

from ..options import GGUF_TYPES

HELP = "write a dense copy of a folder saved with --save-format sparse"
EPILOG = """example:
  llmprune decompress out/llama-24-sparse out/llama-24-dense
  llmprune decompress out/llama-24-sparse out/llama-24-gguf --save-format gguf --gguf-type q8_0
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a folder saved with --save-format sparse")
    parser.add_argument("output", help="where to write the dense folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    parser.add_argument("--save-format", default="dense", choices=("dense", "gguf"),
                        help="dense safetensors, or one GGUF file for llama.cpp (default: dense)")
    parser.add_argument("--gguf-type", default="f16", choices=GGUF_TYPES, help="--save-format gguf: how weight matrices are stored (default: f16)")


def run(args: argparse.Namespace) -> int:
    from ..api import decompress

    written = decompress(args.folder, args.output, overwrite=args.overwrite, save_format=args.save_format,
                         gguf_type=args.gguf_type)
    if args.save_format == "gguf":
        print(f"wrote {written['path']} ({written['gguf_type']}, {written['bytes'] / 2**20:.1f} MiB)")
    else:
        print(f"wrote a dense copy to {written['path']}")
    return 0
