"""The public Python API. The CLI calls these functions and nothing else.

    model, tokenizer = llmprune.load_model("llama")
    report = llmprune.prune(model, tokenizer, method="wanda", sparsity=0.5)
    llmprune.save_pretrained(model, tokenizer, "out/llama-wanda-50", report)
    report = llmprune.prune_folder("big-model", "out/big", method="wanda", sparsity=0.5)  # streamed from disk

Options are ``llmprune.PruneOptions`` fields, given as an object, as keywords, or both (keywords win).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .calibration import calibration_chunks
from .engine import InMemory, Lifecycle, prune_model
from .errors import LLMPruneError
from .io.atomic import check_free_space, check_output_dir, write_folder_atomically
from .io.loading import load_causal_lm
from .io.writer import model_bytes, save_pruned_model, write_report, write_report_file
from .options import PruneOptions, RunOptions, with_overrides
from .allocation import make_allocation
from .allocation.auto import AutoAllocation, split_heldout
from .process import resolve_device, resolve_dtype
from .report import coverage_warning, prune_report
from .structured.job import run_shrink  # noqa: F401  (the `llmprune shrink` job)
from .structured.run import shrink  # noqa: F401  (public: llmprune.shrink)


def load_model(spec: str, dtype: str | None = None, device: str = "auto"):
    """(model, tokenizer) from an alias (``llama``), a folder (dense or sparse), a .gguf file or a hub id."""
    model, tokenizer, _ = load_causal_lm(spec, dtype=dtype, device=device)
    return model, tokenizer


def _prune_with(model, tokenizer, home, options: PruneOptions, calibration_ids: torch.Tensor | None) -> dict:
    """One pruning job on a model wherever its blocks live; returns the report."""
    method = options.pruning_method()
    target = options.target()
    device = resolve_device(options.device)
    started = time.perf_counter()
    chunks, nsamples, seqlen = None, options.nsamples, options.seqlen
    allocation_name = options.allocation_name()
    if options.needs_calibration():
        chunks, nsamples, seqlen = calibration_chunks(
            model, tokenizer, options.calibration, options.nsamples, options.seqlen, options.seed,
            options.batch_size, calibration_ids,
        )
    was_training = model.training
    model.eval()
    lifecycle = Lifecycle(model, home, device, options.progress, options.expert_policy())
    if allocation_name == "auto":
        heldout, chunks = split_heldout(tokenizer, options.calibration, options.heldout_windows, seqlen, options.seed,
                                        chunks, calibration_ids)
        allocation = AutoAllocation(method, chunks, heldout, options.owl_m, options.progress)
    else:
        allocation = make_allocation(allocation_name, owl_m=options.owl_m, owl_lambda=options.owl_lambda,
                                     ramp_step=options.ramp_step)
    outcome = prune_model(lifecycle, method, target, chunks, options.selection(), allocation=allocation,
                          steps=options.after_prune_steps())
    model.train(was_training)
    if not outcome.layers:
        raise LLMPruneError("no linear layers matched --targets/--ignore; nothing was pruned")
    calibrated = method.needs_calibration or options.reconstruct
    calibration = {
        "source": ("given token ids" if calibration_ids is not None else options.calibration) if calibrated else None,
        "nsamples": nsamples if calibrated else 0,
        "seqlen": seqlen if calibrated else 0,
        "seed": options.seed,
        "chunks": len(chunks) if chunks else 0,
    }
    report = prune_report(model, method, target, outcome.layers, outcome.weights, calibration,
                          options.targets, options.ignore, started)
    report.update(outcome.entries)
    if method_options := dict(options.method_options):
        report["method_options"] = method_options
    warning = coverage_warning(report["coverage"])
    if warning:
        print(warning, flush=True)
    return report


def prune(model, tokenizer=None, options: PruneOptions | None = None, *, calibration_ids: torch.Tensor | None = None,
          **overrides) -> dict:
    """Prune ``model`` in place, block by block, and return the report.

    Give ``sparsity`` (a fraction in [0, 1)) or ``pattern`` ("2:4"). Calibration windows
    come from ``calibration`` (``wikipedia``, a .txt/.jsonl file, or a hub dataset) unless
    ``calibration_ids`` (nsamples x seqlen token ids) are given. ``batch_size`` splits the
    calibration windows into chunks; by default they go through each block in one pass
    when they fit in memory. ``owl=True`` gives each block its own sparsity from its outlier
    ratio (OWL: ``owl_m`` times the mean score counts as an outlier, sparsities within
    ``sparsity +- owl_lambda``); the mean over pruned weights stays ``sparsity``. Keywords that
    are not options go to the method (e.g. SparseGPT's ``blocksize``). See ``PruneOptions``.
    """
    options = with_overrides(options, **overrides)
    options.validate()
    return _prune_with(model, tokenizer, InMemory(), options, calibration_ids)


def prune_folder(spec: str, output: str | Path, options: PruneOptions | None = None, *, dtype: str | None = None,
                 overwrite: bool = False, calibration_ids: torch.Tensor | None = None, extra_report: dict | None = None,
                 **overrides) -> dict:
    """Prune the safetensors model ``spec`` block by block from disk into the folder ``output``.

    The model is never in memory whole (about one block is); the folder equals, byte for byte, what
    ``prune`` followed by ``save_pretrained`` writes. Returns the report (also written to the folder).
    """
    from .io.streaming import StreamedModel, streaming_output

    options = with_overrides(options, **overrides)
    options.validate()
    if options.allocation_name() == "auto":
        raise LLMPruneError("--allocation auto scores whole pruned models, which streaming never holds; choose uniform, owl or ramp")
    destination = check_output_dir(output, overwrite)
    torch_dtype = resolve_dtype(dtype, resolve_device(options.device))
    streamed = StreamedModel(str(spec), torch_dtype)
    check_free_space(destination.absolute().parent, int(streamed.output_bytes() * 1.02) + 2**20)
    reports: list[dict] = []

    def fill(tmp: Path) -> None:
        report = _prune_with(streamed.model, streamed.tokenizer, streamed.open(tmp), options, calibration_ids)
        streamed.finish(tmp)
        report["model"] = str(spec)
        report["streaming"] = {"input_bytes": streamed.checkpoint.size_bytes(), "output_bytes": streamed.output_bytes()}
        report.update(extra_report or {})
        report["output"] = str(destination)
        write_report(tmp, report)
        reports.append(report)

    with streaming_output(destination, overwrite):
        write_folder_atomically(destination, fill, overwrite=overwrite)
    return reports[0]


def save_pretrained(model, tokenizer, output_dir: str | Path, report: dict | None = None, overwrite: bool = False, **options) -> Path:
    """Write a standard model folder plus ``llmprune_report.json``, atomically."""
    return save_pruned_model(model, tokenizer, output_dir, report, overwrite=overwrite, **options)


def _wikipedia_ppl(model, tokenizer, options: RunOptions) -> float:
    from .evaluate.perplexity import evaluation_device, perplexity

    with evaluation_device(model, resolve_device(options.device)):
        result = perplexity(
            model, tokenizer, source="wikipedia", split="test", seqlen=options.eval_seqlen,
            max_windows=options.eval_windows, progress=options.progress,
        )
    return result.ppl


def run_prune(options: RunOptions) -> dict:
    """The whole job of the ``llmprune`` command: load, (evaluate), prune, (evaluate), save, (push).

    Every input is checked before the model is loaded, so bad input costs nothing and writes nothing.
    """
    from .data import load_text

    options.validate()
    if options.output:
        check_output_dir(options.output, options.overwrite)
    load_text(options.calibration, split="train")  # a missing or unreadable source fails before the model loads
    if options.tasks:
        from .evaluate.harness import parse_tasks, prepare_tasks

        prepare_tasks(parse_tasks(options.tasks), options.num_fewshot, options.limit)  # a misspelt task fails now
    if options.stream or _auto_stream(options):
        report = prune_folder(options.model, options.output, options.prune_options(), dtype=options.dtype,
                              overwrite=options.overwrite)
    else:
        report = _run_in_memory(options)
    if options.report:
        write_report_file(options.report, report)
    if options.push_to_hub:
        from .io.hub import push_folder

        report["pushed_to"] = push_folder(report["output"], options.push_to_hub)
    return report


def _auto_stream(options: RunOptions) -> bool:
    """A model larger than the free memory is streamed when nothing needs it whole."""
    from .io.streaming import should_stream

    if not options.output or options.evaluates() or options.save_format != "dense":
        return False
    if should_stream(options.model, options.dtype, options.device):
        print("llmprune: the model does not fit in the free memory; streaming it block by block (--stream)", flush=True)
        return True
    return False


def _run_in_memory(options: RunOptions) -> dict:
    model, tokenizer = load_model(options.model, dtype=options.dtype, device=options.device)
    if options.output and options.save_format == "gguf":
        from .io.gguf_export import check_exportable

        check_exportable(model.config)  # a family llama.cpp cannot take is refused before the work
    if options.output:
        check_free_space(Path(options.output).expanduser().absolute().parent, model_bytes(model))
    evaluation = {}
    if options.eval_ppl:
        evaluation["ppl_before"] = _wikipedia_ppl(model, tokenizer, options)
    report = prune(model, tokenizer, options.prune_options())
    report["model"] = options.model
    if options.eval_ppl:
        evaluation["ppl_after"] = _wikipedia_ppl(model, tokenizer, options)
        evaluation.update({"dataset": "wikipedia:test", "seqlen": options.eval_seqlen, "windows": options.eval_windows})
    if options.ppl or options.tasks:
        from .evaluate import evaluate
        from .evaluate.perplexity import evaluation_device

        with evaluation_device(model, resolve_device(options.device)):
            evaluation["results"] = evaluate(
            model, tokenizer, ppl=options.ppl, tasks=options.tasks, seqlen=options.eval_seqlen,
                max_windows=options.eval_windows, batch_size=options.eval_batch_size or 4,
                num_fewshot=options.num_fewshot, progress=options.progress,
                limit=options.limit,
            )
    if evaluation:
        report["eval"] = evaluation
    if options.output:
        extra = {"save_format": options.save_format} if options.save_format != "dense" else {}
        if options.save_format == "gguf":
            extra["gguf_type"] = options.gguf_type
        report["output"] = str(save_pretrained(model, tokenizer, options.output, report, overwrite=options.overwrite, **extra))
    return report
