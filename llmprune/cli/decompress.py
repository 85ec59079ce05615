"""Write a dense copy of a sparse model folder (compressed-tensors bitmask or 2:4 layout).

The copy holds ordinary safetensors that any transformers version loads; tokenizer files,
the pruning report and other files are copied as they are.
"""
from __future__ import annotations

import argparse

HELP = "write a dense copy of a folder saved with --save-format sparse"
EPILOG = """example:
  llmprune decompress out/llama-24-sparse out/llama-24-dense
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a folder saved with --save-format sparse")
    parser.add_argument("output", help="where to write the dense folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")


def run(args: argparse.Namespace) -> int:
    from ..io.loading import decompress_folder

    out = decompress_folder(args.folder, args.output, overwrite=args.overwrite)
    print(f"wrote a dense copy to {out}")
    return 0
