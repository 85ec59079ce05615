"""The API functions of the commands that read or move a model without changing it: eval, inspect,
decompress, convert, push. Each CLI module parses its flags, calls one of these and prints the result."""
from __future__ import annotations

from pathlib import Path

from ..errors import LLMPruneError


def evaluate_model(spec: str, *, dtype: str | None = None, device: str = "auto", json_path: str | None = None,
                   **settings) -> dict:
    """Load ``spec`` and evaluate it (``settings``: ``llmprune.evaluate.evaluate``'s keywords); the results,
    with the model's spec, path, dtype and device, also written to ``json_path`` when given."""
    from ..evaluate.run import evaluate, write_results
    from ..io.loading import load_causal_lm
    from ..process import resolve_device

    if settings.get("max_windows") is not None and settings["max_windows"] < 1:
        raise LLMPruneError("--eval-windows must be positive")
    if json_path:  # fail before minutes of evaluation, not after
        parent = Path(json_path).expanduser().parent
        if not parent.is_dir():
            raise LLMPruneError(f"cannot write {json_path}: the folder {parent} does not exist")
    device = resolve_device(device)
    model, tokenizer, path = load_causal_lm(spec, dtype=dtype, device=device)
    model.to(device)
    results = evaluate(model, tokenizer, **settings)
    results["model"] = {"spec": spec, "path": path, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                        "device": device}
    if json_path:
        write_results(results, json_path)
    return results


def inspect_model(folder: str | Path, pattern: str = "2:4"):
    """Per-layer sparsity, N:M fit, parameters and bytes of a model folder (``inspect.FolderInfo``)."""
    from ..inspect import inspect_folder

    return inspect_folder(folder, pattern=pattern)


def decompress(folder: str | Path, output: str | Path, *, overwrite: bool = False, save_format: str = "dense",
               gguf_type: str = "f16") -> dict:
    """A dense copy of a sparse folder, as safetensors or as one GGUF file; {"path", ...} of what was written."""
    if save_format == "gguf":
        from ..io.gguf_export import gguf_folder_from

        return gguf_folder_from(folder, output, gguf_type, overwrite=overwrite)
    if save_format != "dense":
        raise LLMPruneError(f"decompress writes dense or gguf, not '{save_format}'")
    from ..io.loading import decompress_folder

    return {"path": decompress_folder(folder, output, overwrite=overwrite)}


def convert(folder: str | Path, output: str | Path, gguf_type: str = "f16", *, overwrite: bool = False,
            source: str | Path | None = None) -> dict:
    """One GGUF file for llama.cpp from a folder llmprune wrote (or an alias); what was written."""
    from ..io.gguf_export import export_gguf

    return export_gguf(folder, output, gguf_type, overwrite=overwrite, source=source)


def push(folder: str | Path, repo_id: str, **options) -> str:
    """Upload ``folder`` to the Hub in one commit (``io.hub.push_folder``'s options); the repository's URL."""
    from ..io.hub import push_folder

    return push_folder(folder, repo_id, **options)
