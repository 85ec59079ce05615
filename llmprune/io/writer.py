"""Writing a pruned model folder atomically: weights, config, tokenizer and the report."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import LLMPruneError
from .atomic import check_free_space, write_file_atomically, write_folder_atomically

REPORT_NAME = "llmprune_report.json"


def model_bytes(model) -> int:
    """What a dense save of the model needs on disk, with a little room for metadata."""
    return int(sum(p.numel() * p.element_size() for p in model.parameters()) * 1.05) + 2**20


def write_report(folder: Path, report: dict) -> Path:
    """``llmprune_report.json`` inside ``folder``."""
    return write_report_file(Path(folder) / REPORT_NAME, report)


def write_report_file(path: str | Path, report: dict) -> Path:
    """The report as indented JSON at ``path``, written atomically."""
    return write_file_atomically(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


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
