"""The whole job of ``llmprune shrink``: check every option, load, (evaluate), shrink, (evaluate), save."""
from __future__ import annotations

from pathlib import Path

from ..errors import LLMPruneError
from ..evaluate.perplexity import evaluation_device, perplexity
from ..process import resolve_device
from .options import ShrinkRunOptions
from .plan import plan_shrink
from .run import shrink


def folder_weight_bytes(folder: str | Path) -> int:
    """Bytes of the weight files (safetensors or GGUF) in a saved folder (what the download and the disk cost)."""
    return sum(path.stat().st_size for path in Path(folder).iterdir() if path.suffix in (".safetensors", ".gguf"))


def run_shrink(options: ShrinkRunOptions | None = None, **overrides) -> dict:
    """Returns the report; with ``output`` the shrunk model is saved there as a stock folder."""
    from dataclasses import fields, replace

    from ..data import load_text
    from ..io.atomic import check_output_dir
    from ..io.loading import load_causal_lm, resolve_model_path
    from ..io.writer import REPORT_NAME, save_pruned_model, write_report_file

    options = options if options is not None else ShrinkRunOptions()
    unknown = sorted(set(overrides) - {f.name for f in fields(options)})
    if unknown:
        raise LLMPruneError(f"unknown shrink option(s) {', '.join(unknown)}")
    options = replace(options, **overrides)
    options.validate()
    if not options.output and not options.report and not options.evaluates():
        raise LLMPruneError("nothing to keep: give --output (and/or --report, --eval-ppl)")
    if options.output:
        check_output_dir(options.output, options.overwrite)
    load_text(options.calibration, split="train")  # a bad source fails before loading
    if options.tasks:
        from ..evaluate.harness import parse_tasks, prepare_tasks

        prepare_tasks(parse_tasks(options.tasks), options.num_fewshot, options.limit)
    loaded, tokenizer, _ = load_causal_lm(options.model, dtype=options.dtype, device=options.device)
    shrink_options = options.shrink_options()
    plan_shrink(loaded, shrink_options.ratio, shrink_options.units, int(shrink_options.multiple_of))  # refusals before any work
    if options.output and options.save_format == "gguf":
        from ..io.gguf_export import check_exportable

        check_exportable(loaded.config)  # a family llama.cpp cannot take is refused before the work
    evaluation: dict = {}

    def wikipedia_ppl() -> float:
        with evaluation_device(loaded, resolve_device(options.device)):
            return perplexity(loaded, tokenizer, source="wikipedia", split="test", seqlen=options.eval_seqlen,
                              max_windows=options.eval_windows, progress=options.progress).ppl

    if options.eval_ppl:
        evaluation["ppl_before"] = wikipedia_ppl()
    report = shrink(loaded, tokenizer, shrink_options)
    report["model"] = options.model
    if options.eval_ppl:
        evaluation["ppl_after"] = wikipedia_ppl()
        evaluation.update({"dataset": "wikipedia:test", "seqlen": options.eval_seqlen, "windows": options.eval_windows})
    if options.ppl or options.tasks:
        from ..evaluate import evaluate

        with evaluation_device(loaded, resolve_device(options.device)):
            evaluation["results"] = evaluate(
                loaded, tokenizer, ppl=options.ppl, tasks=options.tasks, seqlen=options.eval_seqlen,
                max_windows=options.eval_windows, batch_size=options.eval_batch_size or 4,
                num_fewshot=options.num_fewshot, progress=options.progress, limit=options.limit,
            )
    if evaluation:
        report["eval"] = evaluation
    if options.output:
        source = Path(resolve_model_path(options.model))
        report["file_bytes"] = {"before": folder_weight_bytes(source) if source.is_dir() else None}
        report["output"] = str(save_pruned_model(loaded, tokenizer, options.output, report, overwrite=options.overwrite,
                                                 save_format=options.save_format, gguf_type=options.gguf_type))
        # The file size is known only once written; the report in the folder is replaced (atomically) to record it.
        report["file_bytes"]["after"] = folder_weight_bytes(report["output"])
        write_report_file(Path(report["output"]) / REPORT_NAME, report)
    if options.report:
        write_report_file(options.report, report)
    return report
