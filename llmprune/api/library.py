"""Pruning in Python: a model in memory (``prune``) or a checkpoint streamed from disk (``prune_folder``).

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

from ..allocation import make_allocation
from ..allocation.auto import AutoAllocation, split_heldout
from ..calibration import CalibrationText, calibration_chunks, model_calibration_batch
from ..engine import InMemory, Lifecycle, prune_model
from ..errors import LLMPruneError
from ..io.atomic import check_free_space, check_output_dir, write_folder_atomically
from ..io.loading import load_causal_lm
from ..io.writer import save_pruned_model, write_report
from ..options import PruneOptions, with_overrides
from ..process import resolve_device, resolve_dtype
from ..report import coverage_warning, prune_report
from .build import PruneParts, build


def load_model(spec: str, dtype: str | None = None, device: str = "auto"):
    """(model, tokenizer) from an alias (``llama``), a folder (dense or sparse), a .gguf file or a hub id."""
    model, tokenizer, _ = load_causal_lm(spec, dtype=dtype, device=device)
    return model, tokenizer


def _allocation(parts: PruneParts, options: PruneOptions, tokenizer, chunks, seqlen: int, calibration,
                calibration_ids: torch.Tensor | None):
    """(the allocation, the calibration chunks left for pruning): auto keeps some windows apart to score with."""
    if parts.allocation != "auto":
        return make_allocation(parts.allocation, owl_m=options.owl_m, owl_lambda=options.owl_lambda,
                               ramp_step=options.ramp_step), chunks
    heldout, chunks = split_heldout(tokenizer, calibration, options.heldout_windows, seqlen, options.seed, chunks,
                                    calibration_ids)
    return AutoAllocation(parts.method, chunks, heldout, options.owl_m, options.progress), chunks


def prune_with(model, tokenizer, home, options: PruneOptions, calibration_ids: torch.Tensor | None = None,
               calibration: CalibrationText | None = None, ids_tokenized_here: bool = False) -> dict:
    """One pruning job on a model wherever its blocks live; returns the report. ``calibration``: the
    calibration text already read (else ``options.calibration`` is read here). ``ids_tokenized_here``:
    ``calibration_ids`` are ``model_calibration_batch``'s own tokenization of that text, so the report names
    the text, not "given token ids"."""
    parts = build(options)
    started = time.perf_counter()
    source = calibration or options.calibration
    chunks, nsamples, seqlen = None, options.nsamples, options.seqlen
    if parts.needs_calibration:
        chunks, nsamples, seqlen = calibration_chunks(model, tokenizer, source, options.nsamples, options.seqlen,
                                                      options.seed, options.batch_size, calibration_ids)
    was_training = model.training
    model.eval()
    lifecycle = Lifecycle(model, home, resolve_device(options.device), options.progress, parts.experts)
    allocation, chunks = _allocation(parts, options, tokenizer, chunks, seqlen, source, calibration_ids)
    outcome = prune_model(lifecycle, parts.method, parts.target, chunks, parts.selection, allocation=allocation,
                          steps=parts.steps)
    model.train(was_training)
    if not outcome.layers:
        raise LLMPruneError("no linear layers matched --targets/--ignore; nothing was pruned")
    calibrated = parts.method.needs_calibration or options.reconstruct
    calibration_entry = {
        "source": ("given token ids" if calibration_ids is not None and not ids_tokenized_here else options.calibration)
        if calibrated else None,
        "nsamples": nsamples if calibrated else 0,
        "seqlen": seqlen if calibrated else 0,
        "seed": options.seed,
        "chunks": len(chunks) if chunks else 0,
    }
    report = prune_report(model, parts.method, parts.target, outcome.layers, outcome.weights, calibration_entry,
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
    return prune_with(model, tokenizer, InMemory(), with_overrides(options, **overrides), calibration_ids)


def prune_folder(spec: str, output: str | Path, options: PruneOptions | None = None, *, dtype: str | None = None,
                 overwrite: bool = False, calibration_ids: torch.Tensor | None = None, extra_report: dict | None = None,
                 calibration: CalibrationText | None = None, **overrides) -> dict:
    """Prune the safetensors model ``spec`` block by block from disk into the folder ``output``.

    The model is never in memory whole (about one block is); the folder equals, byte for byte, what
    ``prune`` followed by ``save_pretrained`` writes. Returns the report (also written to the folder).
    """
    from ..io.streaming import StreamedModel, streaming_output

    options = with_overrides(options, **overrides)
    build(options)
    if options.allocation_name() == "auto":
        raise LLMPruneError("--allocation auto scores whole pruned models, which streaming never holds; choose uniform, owl or ramp")
    destination = check_output_dir(output, overwrite)
    torch_dtype = resolve_dtype(dtype, resolve_device(options.device))
    streamed = StreamedModel(str(spec), torch_dtype)
    check_free_space(destination.absolute().parent, int(streamed.output_bytes() * 1.02) + 2**20)
    reports: list[dict] = []

    def fill(tmp: Path) -> None:
        ids, tokenized_here = calibration_ids, False
        if ids is None and build(options).needs_calibration:
            ids = model_calibration_batch(streamed.model, streamed.tokenizer, calibration or options.calibration,
                                          options.nsamples, options.seqlen, options.seed)
            tokenized_here = True
        # The tokenizer (about 130 MiB for a 150k-token vocabulary) would otherwise sit beside every
        # block; only the output's tokenizer files need it again, at the end.
        streamed.release_tokenizer()
        report = prune_with(streamed.model, None, streamed.open(tmp), options, ids, calibration, tokenized_here)
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
