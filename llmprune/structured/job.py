"""The whole job of ``llmprune shrink``: check every option, load, (evaluate), shrink, (evaluate), save."""
from __future__ import annotations

from pathlib import Path

from ..errors import LLMPruneError
from .run import check_shrink_options, shrink


def folder_weight_bytes(folder: str | Path) -> int:
    """Bytes of the safetensors files in a saved folder (what the download and the disk cost)."""
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


def run_shrink(model: str = "llama", output: str | None = None, overwrite: bool = False, dtype: str | None = None,
               device: str = "auto", eval_ppl: bool = False, eval_seqlen: int = 512, eval_windows: int | None = None,
               ppl: str | None = None, tasks: str | None = None, num_fewshot: int | None = None, limit: float | None = None,
               eval_batch_size: int | None = None, report_path: str | None = None, progress: bool = True, **shrink_options) -> dict:
    """Returns the report; with ``output`` the shrunk model is saved there as a stock folder."""
    from ..data import load_text
    from ..io.atomic import check_output_dir
    from ..io.loading import load_causal_lm
    from ..io.writer import save_pruned_model, write_report_file

    check_shrink_options(None, shrink_options.get("ratio", 0.25), shrink_options.get("units", "auto"),
                         shrink_options.get("score", "obs"), shrink_options.get("block_score", "angular"),
                         shrink_options.get("reconstruct", False))
    if output:
        check_output_dir(output, overwrite)
    if shrink_options.get("calibration_ids") is None:
        load_text(shrink_options.get("calibration", "wikipedia"), split="train")  # a bad source fails before loading
    if tasks:
        from ..evaluate.harness import parse_tasks, prepare_tasks

        prepare_tasks(parse_tasks(tasks), num_fewshot, limit)
    loaded, tokenizer, _ = load_causal_lm(model, dtype=dtype, device=device)
    check_shrink_options(loaded, shrink_options.get("ratio", 0.25), shrink_options.get("units", "auto"),
                         shrink_options.get("score", "obs"), shrink_options.get("block_score", "angular"), False)
    evaluation: dict = {}

    def wikipedia_ppl() -> float:
        from ..evaluate.perplexity import perplexity

        return perplexity(loaded, tokenizer, source="wikipedia", split="test", seqlen=eval_seqlen,
                          max_windows=eval_windows, progress=progress).ppl

    if eval_ppl:
        evaluation["ppl_before"] = wikipedia_ppl()
    report = shrink(loaded, tokenizer, device=device, progress=progress, **shrink_options)
    report["model"] = model
    if eval_ppl:
        evaluation["ppl_after"] = wikipedia_ppl()
        evaluation.update({"dataset": "wikipedia:test", "seqlen": eval_seqlen or 512, "windows": eval_windows})
    if ppl or tasks:
        from ..evaluate import evaluate

        evaluation["results"] = evaluate(
            loaded, tokenizer, ppl=ppl, tasks=tasks, seqlen=eval_seqlen or 512, max_windows=eval_windows,
            batch_size=eval_batch_size or 4, num_fewshot=num_fewshot, progress=progress,
            limit=int(limit) if limit and limit >= 1 else limit,
        )
    if evaluation:
        report["eval"] = evaluation
    if output:
        from ..io.writer import REPORT_NAME
        from ..io.loading import resolve_model_path

        report["file_bytes"] = {"before": folder_weight_bytes(resolve_model_path(model)) if Path(resolve_model_path(model)).is_dir() else None}
        report["output"] = str(save_pruned_model(loaded, tokenizer, output, report, overwrite=overwrite))
        # The file size is known only once written; the report in the folder is replaced (atomically) to record it.
        report["file_bytes"]["after"] = folder_weight_bytes(report["output"])
        write_report_file(Path(report["output"]) / REPORT_NAME, report)
    if report_path:
        write_report_file(report_path, report)
    if not output and not report_path and not evaluation:
        raise LLMPruneError("nothing to keep: give --output (and/or --report, --eval-ppl)")
    return report
