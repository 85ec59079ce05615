"""Upload a model folder to the Hugging Face Hub in one commit.

Creates the repository if needed and writes a model card (README.md) first when the folder
has none: metadata (base model, tags) and the method, sparsity, calibration and evaluation
from llmprune_report.json. The token comes from --token, HF_TOKEN or 'hf auth login'.
A failed push leaves the local folder untouched.
"""
from __future__ import annotations

import argparse

HELP = "upload a model folder (and a generated model card) to the Hugging Face Hub"
EPILOG = """examples:
  llmprune push out/llama-wanda-50 --repo-id me/smollm2-wanda-50 --dry-run
  llmprune push out/llama-wanda-50 --repo-id me/smollm2-wanda-50 --private
  llmprune push out/llama-24 --repo-id me/smollm2-24 --revision sparse
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the model folder to upload")
    parser.add_argument("--repo-id", required=True, help="namespace/name of the model repository")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN, then the saved login)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, send nothing")


def run(args: argparse.Namespace) -> int:
    from ..api import push

    url = push(
        args.folder, args.repo_id, private=args.private, revision=args.revision,
        token=args.token, dry_run=args.dry_run, commit_message=args.message,
    )
    if not args.dry_run:
        print(f"pushed {args.folder} to {url}")
    return 0
