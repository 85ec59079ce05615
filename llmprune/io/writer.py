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
    """``llmprune_report.json`` inside ``folder``; it records the GGUF file the model came from, if any, so a
    later GGUF export keeps that file's tokenizer and description."""
    if report.get("model") and "source_gguf" not in report:
        from .gguf_export import source_gguf_of

        source = source_gguf_of(str(report["model"]))
        if source is not None:
            report["source_gguf"] = str(source)
    return write_report_file(Path(folder) / REPORT_NAME, report)


def write_report_file(path: str | Path, report: dict) -> Path:
    """The report as indented JSON at ``path``, written atomically."""
    return write_file_atomically(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


SAVE_FORMATS = ("dense", "sparse", "gguf")


def save_pruned_model(
    model,
    tokenizer,
    output_dir: str | Path,
    report: dict | None = None,
    overwrite: bool = False,
    save_format: str = "dense",
    gguf_type: str = "f16",
) -> Path:
    """A standard model folder (safetensors, config, tokenizer) plus ``llmprune_report.json``.

    ``save_format="sparse"`` stores the pruned layers in the compressed-tensors bitmask
    layouts (see ``llmprune.io.sparse``); ``"dense"`` loads anywhere; ``"gguf"`` writes one llama.cpp file
    of ``gguf_type`` instead of the safetensors (see ``llmprune.io.gguf_export``).
    """
    if save_format not in SAVE_FORMATS:
        raise LLMPruneError(f"unknown save format '{save_format}' (use {', '.join(SAVE_FORMATS)})")
    target = Path(output_dir).expanduser()
    check_free_space(target.absolute().parent, model_bytes(model))

    def fill(tmp: Path) -> None:
        if save_format == "gguf":
            from .gguf_export import write_gguf_folder

            def save_model_folder(folder: Path) -> None:
                model.save_pretrained(folder)
                if tokenizer is not None:
                    tokenizer.save_pretrained(folder)

            written = write_gguf_folder(tmp, target, save_model_folder, gguf_type, report)
            if report is not None:
                report["gguf"] = written
                write_report(tmp, report)
            return
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
