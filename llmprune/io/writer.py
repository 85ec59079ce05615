"""Writing a pruned model folder atomically: weights, config, tokenizer and the report."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import LLMPruneError

REPORT_NAME = "llmprune_report.json"


def check_output_dir(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing folder early, before any work is done."""
    target = Path(output_dir).expanduser()
    if target.exists() and not overwrite:
        raise LLMPruneError(f"output folder {target} already exists (pass --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise LLMPruneError(f"output path {target} exists and is not a folder")
    return target


def model_bytes(model) -> int:
    """What a dense save of the model needs on disk, with a little room for metadata."""
    return int(sum(p.numel() * p.element_size() for p in model.parameters()) * 1.05) + 2**20


def check_free_space(parent: Path, needed_bytes: int) -> None:
    parent = parent if parent.exists() else parent.parent
    free = shutil.disk_usage(parent).free
    if free < needed_bytes:
        raise LLMPruneError(
            f"not enough space in {parent}: {free / 2**20:.0f} MiB free, about {needed_bytes / 2**20:.0f} MiB needed"
        )


def write_folder_atomically(target: Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """``fill(tmp)`` writes into a temporary sibling folder which is then renamed to ``target``.

    A failure (or Ctrl-C) leaves no half-written folder behind; an existing target is
    replaced only after the new one is complete.
    """
    target = check_output_dir(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        # mkdtemp (and the safetensors writer) create private files; a model folder should read like any other.
        tmp.chmod(0o755)
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LLMPruneError(f"could not write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_report(folder: Path, report: dict) -> Path:
    path = Path(folder) / REPORT_NAME
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


SAVE_FORMATS = ("dense", "sparse")


def save_pruned_model(
    model,
    tokenizer,
    output_dir: str | Path,
    report: dict | None = None,
    overwrite: bool = False,
    save_format: str = "dense",
) -> Path:
    """A standard model folder (safetensors, config, tokenizer) plus ``llmprune_report.json``.

    ``save_format="sparse"`` stores the pruned layers in the compressed-tensors bitmask
    layouts (see ``llmprune.io.sparse``); ``"dense"`` loads anywhere.
    """
    if save_format not in SAVE_FORMATS:
        raise LLMPruneError(f"unknown save format '{save_format}' (use {' or '.join(SAVE_FORMATS)})")
    target = Path(output_dir).expanduser()
    check_free_space(target.absolute().parent, model_bytes(model))

    def fill(tmp: Path) -> None:
        if save_format == "sparse":
            from .sparse import save_sparse_model

            save_sparse_model(model, tmp, report)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if report is not None:
            write_report(tmp, report)

    return write_folder_atomically(target, fill, overwrite=overwrite)
