"""Show what a model folder holds: per-layer sparsity, whether each linear layer fits an N:M
pattern, parameters and non-zeros, and the bytes its weights take dense and sparse.

Works on any folder of safetensors weights (pruned by llmprune or not, dense or sparse).
"""
from __future__ import annotations

import argparse
import json

HELP = "per-layer sparsity, N:M check, parameters and bytes of a model folder"
EPILOG = """examples:
  llmprune inspect out/llama-wanda-50
  llmprune inspect out/llama-24 --pattern 2:4 --summary
  llmprune inspect out/llama-24 --json > stats.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a model folder (config.json and *.safetensors)")
    parser.add_argument("--pattern", default="2:4", help="N:M pattern to check each linear layer against (default 2:4)")
    parser.add_argument("--summary", action="store_true", help="totals only, no per-layer table")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    from ..api import inspect_model
    from ..inspect import format_table

    info = inspect_model(args.folder, pattern=args.pattern)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
    else:
        print(format_table(info, show_layers=not args.summary))
    return 0
