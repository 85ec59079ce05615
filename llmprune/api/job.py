"""The job shell every model job shares: check, load once, read the calibration text once, evaluate
before and after, save (any ``--save-format``), report, push. A job differs only in its ``Step``: what it
does to the loaded model (prune, shrink) and the few checks and report entries of its own.

    run_prune(RunOptions(model="llama", sparsity=0.5, output="out/l50"))   # llmprune
    run_shrink(ShrinkRunOptions(model="llama", ratio=0.25, output="out/s25"))   # llmprune shrink
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..calibration import CalibrationText
from ..engine import InMemory
from ..errors import LLMPruneError
from ..io.atomic import check_free_space, check_output_dir
from ..io.writer import REPORT_NAME, model_bytes, write_report_file
from ..options import RunOptions, asks_perplexity, with_overrides
from ..process import resolve_device
from ..structured.options import ShrinkRunOptions
from .build import build
from .library import load_model, prune_folder, prune_with, save_pretrained


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class Step:
    """What one job does; everything around it is ``run_job``'s."""

    apply: Callable[[Any, Any, CalibrationText], dict]  # (model, tokenizer, calibration text) -> the report
    check_options: Callable[[], None] = _nothing  # the job's own refusals before anything is read or loaded
    check_model: Callable[[Any], None] = _nothing  # refusals once the model is loaded, before any work
    before_save: Callable[[dict], None] = _nothing  # report entries known before the folder is written
    after_save: Callable[[dict], None] = _nothing  # ... and after it (the file sizes)
    stream: Callable[[CalibrationText], dict | None] = _nothing  # the job from disk instead (None: in memory)


def run_job(options: RunOptions | ShrinkRunOptions, step: Step) -> dict:
    """The whole job: every input is checked before the model is loaded, so bad input costs nothing and
    writes nothing. ``options``: a ``RunOptions`` or ``ShrinkRunOptions`` (model, output, evaluation fields)."""
    calibration = _check(options, step)
    report = step.stream(calibration)
    if report is None:
        report = _in_memory(options, step, calibration)
    if options.report:
        write_report_file(options.report, report)
    if getattr(options, "push_to_hub", None):
        from ..io.hub import push_folder

        report["pushed_to"] = push_folder(report["output"], options.push_to_hub)
    return report


def _check(options: RunOptions | ShrinkRunOptions, step: Step) -> CalibrationText:
    """Every check that needs no model; returns the calibration text, read here once (a missing or
    unreadable source fails before the model loads)."""
    options.validate()
    step.check_options()
    if options.save_format == "gguf":
        from ..io.gguf_export import parse_gguf_type

        parse_gguf_type(options.gguf_type)  # a K-quant without llama.cpp's quantizer fails now
    if options.output:
        check_output_dir(options.output, options.overwrite)
    calibration = CalibrationText(options.calibration)
    if options.tasks:
        from ..evaluate.harness import parse_tasks, prepare_tasks

        prepare_tasks(parse_tasks(options.tasks), options.num_fewshot, options.limit)  # a misspelt task fails now
    return calibration


def _in_memory(options: RunOptions | ShrinkRunOptions, step: Step, calibration: CalibrationText) -> dict:
    model, tokenizer = load_model(options.model, dtype=options.dtype, device=options.device)
    step.check_model(model)
    if options.output and options.save_format == "gguf":
        from ..io.gguf_export import check_exportable

        check_exportable(model.config)  # a family llama.cpp cannot take is refused before the work
    report = _evaluated(options, model, tokenizer, lambda: step.apply(model, tokenizer, calibration))
    if options.output:
        step.before_save(report)
        report["output"] = str(save_pretrained(model, tokenizer, options.output, report, overwrite=options.overwrite,
                                               save_format=options.save_format, gguf_type=options.gguf_type))
        step.after_save(report)
    return report


def _wikipedia_ppl(model, tokenizer, options) -> float:
    from ..evaluate.perplexity import evaluation_device, perplexity

    with evaluation_device(model, resolve_device(options.device)):
        return perplexity(model, tokenizer, source="wikipedia", split="test", seqlen=options.eval_seqlen,
                          max_windows=options.eval_windows, progress=options.progress).ppl


def _evaluated(options, model, tokenizer, apply: Callable[[], dict]) -> dict:
    """``apply()``'s report with the evaluation asked for: Wikipedia perplexity before and after, then the
    perplexity sources and lm-eval tasks after."""
    evaluation: dict = {}
    if options.eval_ppl:
        evaluation["ppl_before"] = _wikipedia_ppl(model, tokenizer, options)
    report = apply()
    report["model"] = options.model
    if options.eval_ppl:
        evaluation["ppl_after"] = _wikipedia_ppl(model, tokenizer, options)
        evaluation.update({"dataset": "wikipedia:test", "seqlen": options.eval_seqlen, "windows": options.eval_windows})
    if asks_perplexity(options.ppl) or options.tasks:
        from ..evaluate import evaluate
        from ..evaluate.perplexity import evaluation_device

        with evaluation_device(model, resolve_device(options.device)):  # the engine left the model on the host
            evaluation["results"] = evaluate(
                model, tokenizer, ppl=options.ppl, tasks=options.tasks, seqlen=options.eval_seqlen,
                max_windows=options.eval_windows, batch_size=options.eval_batch_size or 4,
                num_fewshot=options.num_fewshot, progress=options.progress, limit=options.limit,
            )
    if evaluation:
        report["eval"] = evaluation
    return report


def run_prune(options: RunOptions) -> dict:
    """The job of the ``llmprune`` command: load, (evaluate), prune, (evaluate), save, (push); the model
    streams from disk block by block with ``stream``, or when it does not fit in memory."""
    prune_options = options.prune_options()

    def stream(calibration: CalibrationText) -> dict | None:
        if not (options.stream or _auto_stream(options)):
            return None
        return prune_folder(options.model, options.output, prune_options, dtype=options.dtype,
                            overwrite=options.overwrite, calibration=calibration)

    def check_model(model) -> None:
        if options.output:
            check_free_space(Path(options.output).expanduser().absolute().parent, model_bytes(model))

    def apply(model, tokenizer, calibration: CalibrationText) -> dict:
        return prune_with(model, tokenizer, InMemory(), prune_options, calibration=calibration)

    return run_job(options, Step(apply, check_options=lambda: build(prune_options), check_model=check_model,
                                 stream=stream))


def _auto_stream(options: RunOptions) -> bool:
    """A model larger than the free memory is streamed when nothing needs it whole."""
    from ..io.streaming import should_stream

    if not options.output or options.evaluates() or options.save_format != "dense":
        return False
    if should_stream(options.model, options.dtype, options.device):
        print("llmprune: the model does not fit in the free memory; streaming it block by block (--stream)", flush=True)
        return True
    return False


def folder_weight_bytes(folder: str | Path) -> int:
    """Bytes of the weight files (safetensors or GGUF) in a saved folder (what the download and the disk cost)."""
    return sum(path.stat().st_size for path in Path(folder).iterdir() if path.suffix in (".safetensors", ".gguf"))


def run_shrink(options: ShrinkRunOptions | None = None, **overrides) -> dict:
    """The job of ``llmprune shrink``: load, (evaluate), shrink, (evaluate), save. Returns the report; with
    ``output`` the shrunk model is saved there as a stock folder and the report records its weight bytes."""
    from ..io.loading import resolve_model_path
    from ..structured.plan import plan_shrink
    from ..structured.run import shrink

    options = with_overrides(options, ShrinkRunOptions, **overrides)
    shrink_options = options.shrink_options()

    def check_options() -> None:
        if not options.output and not options.report and not options.evaluates():
            raise LLMPruneError("nothing to keep: give --output (and/or --report, --eval-ppl)")

    def check_model(model) -> None:
        plan_shrink(model, shrink_options.ratio, shrink_options.units, int(shrink_options.multiple_of))

    def before_save(report: dict) -> None:
        source = Path(resolve_model_path(options.model))
        report["file_bytes"] = {"before": folder_weight_bytes(source) if source.is_dir() else None}

    def after_save(report: dict) -> None:
        # The file size is known only once written; the report in the folder is replaced (atomically) to record it.
        report["file_bytes"]["after"] = folder_weight_bytes(report["output"])
        write_report_file(Path(report["output"]) / REPORT_NAME, report)

    def apply(model, tokenizer, calibration: CalibrationText) -> dict:
        return shrink(model, tokenizer, shrink_options, calibration_text=calibration)

    return run_job(options, Step(apply, check_options, check_model, before_save, after_save))
