"""The public Python API. The CLI calls these functions and nothing else.

    model, tokenizer = llmprune.load_model("llama")
    report = llmprune.prune(model, tokenizer, method="wanda", sparsity=0.5)
    llmprune.save_pretrained(model, tokenizer, "out/llama-wanda-50", report)
"""
from __future__ import annotations

import platform
import resource
import time
from pathlib import Path

import torch

from . import __version__
from .data import calibration_windows, load_text, tokenize_corpus
from .engine import capture_block_inputs, copy_inputs, prune_blocks
from .errors import LLMPruneError
from .io.writer import save_pruned_model
from .methods import SparsityTarget, get_method
from .models import load_causal_lm, resolve_device
from .owl import check_owl_options, measure_outlier_ratios, owl_allocation

# Calibration batches above this many activation bytes per block are split into chunks
# (two passes per block) instead of one fused pass.
SINGLE_PASS_ACTIVATION_BUDGET = 6 * 2**30


def load_model(spec: str, dtype: str | None = None, device: str = "auto"):
    """(model, tokenizer) from an alias (``llama``), a folder, a .gguf file or a hub id."""
    model, tokenizer, _ = load_causal_lm(spec, dtype=dtype, device=device)
    return model, tokenizer


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's VmHWM is this process's own high-water mark. getrusage's ru_maxrss is only the
    fallback: it also counts the parent's resident memory at the moment of fork/exec, so a
    process started by a large one (a benchmark driver) would report the driver's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def versions() -> dict[str, str]:
    import transformers

    return {
        "llmprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def model_max_length(model) -> int | None:
    config = model.config
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _chunk_count(model, nsamples: int, seqlen: int, batch_size: int | None) -> int:
    if batch_size:
        return -(-nsamples // batch_size)
    config = model.config
    width = max(getattr(config, "intermediate_size", 0) or 0, getattr(config, "hidden_size", 0) or 0, 1)
    # A block holds a handful of activations of the widest size at once.
    per_sample = seqlen * width * 4 * 6
    return max(1, -(-nsamples * per_sample // SINGLE_PASS_ACTIVATION_BUDGET))


# Calibration text is tokenised in pieces of this many characters (bounded memory; see tokenize_corpus).
CALIBRATION_PIECE_CHARS = 200_000


def calibration_batch(tokenizer, source: str = "wikipedia", nsamples: int = 128, seqlen: int = 2048, seed: int = 0) -> torch.Tensor:
    """``nsamples`` x ``seqlen`` token windows at random offsets in the source's train split."""
    text = load_text(source, split="train")
    return calibration_windows(tokenize_corpus(tokenizer, text, piece_chars=CALIBRATION_PIECE_CHARS), nsamples, seqlen, seed)


def return_freed_memory() -> None:
    """Hand memory freed by Python back to the OS (glibc keeps it otherwise).

    Reading and tokenising a corpus leaves freed small blocks in the heap, which tensors (allocated
    with mmap) never reuse; resident memory would stay that much higher for the rest of the run.
    A no-op where glibc is not the C library.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def calibration_chunks(model, tokenizer, needed: bool, calibration: str, nsamples: int, seqlen: int, seed: int,
                       batch_size: int | None, calibration_ids: torch.Tensor | None = None):
    """(chunks or None, nsamples, seqlen): the calibration windows, split into the chunks fed per pass.

    ``seqlen`` is capped at the model's limit; given ``calibration_ids`` set both sizes.
    """
    if not needed:
        return None, nsamples, seqlen
    limit = model_max_length(model)
    if limit and seqlen > limit:
        seqlen = limit
    if calibration_ids is None:
        if tokenizer is None:
            raise LLMPruneError("a tokenizer is needed to build calibration windows")
        calibration_ids = calibration_batch(tokenizer, calibration, nsamples, seqlen, seed)
        return_freed_memory()
    nsamples, seqlen = calibration_ids.shape
    count = _chunk_count(model, nsamples, seqlen, batch_size)
    return list(torch.tensor_split(calibration_ids, count)), nsamples, seqlen


def prune(
    model,
    tokenizer=None,
    method: str = "wanda",
    sparsity: float | None = None,
    pattern: str | None = None,
    calibration: str = "wikipedia",
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    calibration_ids: torch.Tensor | None = None,
    progress: bool = True,
    owl: bool = False,
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    **method_options,
) -> dict:
    """Prune ``model`` in place, block by block, and return the report.

    Give ``sparsity`` (a fraction in [0, 1)) or ``pattern`` ("2:4"). Calibration windows
    come from ``calibration`` (``wikipedia``, a .txt/.jsonl file, or a hub dataset) unless
    ``calibration_ids`` (nsamples x seqlen token ids) are given. ``batch_size`` splits the
    calibration windows into chunks; by default they go through each block in one pass
    when they fit in memory. ``owl=True`` gives each block its own sparsity from its outlier
    ratio (OWL: ``owl_m`` times the mean score counts as an outlier, sparsities within
    ``sparsity +- owl_lambda``); the mean over pruned weights stays ``sparsity``.
    """
    target = SparsityTarget.parse(sparsity, pattern)
    check_owl_options(target, owl, owl_m, owl_lambda)
    pruning_method = get_method(method, **method_options)
    device = resolve_device(device)
    started = time.perf_counter()
    source = "given token ids" if calibration_ids is not None else calibration
    chunks, nsamples, seqlen = calibration_chunks(
        model, tokenizer, pruning_method.needs_calibration or owl, calibration, nsamples, seqlen, seed, batch_size, calibration_ids,
    )
    was_training = model.training
    model.eval()
    owl_report, block_targets, inputs = None, None, None
    if owl:
        inputs = capture_block_inputs(model, chunks, device)
        ratios = measure_outlier_ratios(model, chunks, owl_m, device, targets, ignore, progress, inputs=copy_inputs(inputs))
        owl_report, block_targets = owl_allocation(model, ratios, target, owl_m, owl_lambda, targets, ignore)
    layers = prune_blocks(
        model, pruning_method, target, chunks, device, targets, ignore, progress,
        block_targets=block_targets, inputs=inputs if pruning_method.needs_calibration else None,
    )
    model.train(was_training)
    if not layers:
        raise LLMPruneError("no linear layers matched --targets/--ignore; nothing was pruned")
    report = prune_report(model, pruning_method, target, layers, source, nsamples, seqlen, seed, chunks, targets, ignore, started)
    if owl_report is not None:
        report["owl"] = owl_report
    return report


def prune_report(model, pruning_method, target: SparsityTarget, layers: dict[str, float], source, nsamples: int, seqlen: int,
                 seed: int, chunks, targets, ignore, started: float) -> dict:
    """The report of a run (in memory or streaming): what was asked, what came out, what it cost."""
    modules = dict(model.named_modules())
    total = sum(modules[name].weight.numel() for name in layers)
    zeros = sum(sparsity_ * modules[name].weight.numel() for name, sparsity_ in layers.items())
    return {
        "model": getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "method": pruning_method.name,
        "pattern": target.pattern,
        "target_sparsity": target.sparsity,
        "total_sparsity": zeros / total,
        "calibration": {
            "source": source if pruning_method.needs_calibration else None,
            "nsamples": nsamples if pruning_method.needs_calibration else 0,
            "seqlen": seqlen if pruning_method.needs_calibration else 0,
            "seed": seed,
            "chunks": len(chunks) if chunks else 0,
        },
        "targets": targets,
        "ignore": ignore,
        "prune_seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": versions(),
        "layers": layers,
    }


def save_pretrained(model, tokenizer, output_dir: str | Path, report: dict | None = None, overwrite: bool = False, **options) -> Path:
    """Write a standard model folder plus ``llmprune_report.json``, atomically."""
    return save_pruned_model(model, tokenizer, output_dir, report, overwrite=overwrite, **options)


def _wikipedia_ppl(model, tokenizer, config) -> float:
    from .evaluate.perplexity import perplexity

    result = perplexity(
        model, tokenizer, source="wikipedia", split="test", seqlen=config.eval_seqlen,
        max_windows=config.eval_windows, progress=config.progress,
    )
    return result.ppl


def run_prune(config) -> dict:
    """The whole job of the ``llmprune`` command: load, (evaluate), prune, (evaluate), save, (push).

    Every input is checked before the model is loaded, so bad input costs nothing and writes nothing.
    """
    from .io.writer import check_output_dir

    sparsity = config.sparsity if (config.sparsity is not None or config.pattern) else 0.5
    check_owl_options(SparsityTarget.parse(sparsity, config.pattern), config.owl, config.owl_m, config.owl_lambda)
    get_method(config.method, **config.method_options)
    if config.output:
        check_output_dir(config.output, config.overwrite)
    if config.push_to_hub and not config.output:
        raise LLMPruneError("--push-to-hub needs --output (the folder that is uploaded)")
    if config.save_format not in ("dense", "sparse"):
        raise LLMPruneError(f"unknown save format '{config.save_format}' (use dense or sparse)")

    load_text(config.calibration, split="train")  # a missing or unreadable source fails before the model loads
    if config.tasks:
        from .evaluate.harness import parse_tasks, prepare_tasks

        prepare_tasks(parse_tasks(config.tasks), config.num_fewshot, config.limit)  # a misspelt task fails now
    if config.stream or _auto_stream(config):
        report = _run_streaming(config, sparsity)
    else:
        report = _run_in_memory(config, sparsity)
    if config.report:
        write_report_file(config.report, report)
    if config.push_to_hub:
        from .io.hub import push_folder

        report["pushed_to"] = push_folder(report["output"], config.push_to_hub)
    return report


def _auto_stream(config) -> bool:
    """A model larger than the free memory is streamed when nothing needs it whole."""
    from .streaming import should_stream

    if not config.output or config.eval_ppl or config.ppl or config.tasks or config.save_format != "dense":
        return False
    if should_stream(config.model, config.dtype, config.device):
        print("llmprune: the model does not fit in the free memory; streaming it block by block (--stream)", flush=True)
        return True
    return False


def _run_streaming(config, sparsity) -> dict:
    from .streaming import prune_streaming

    if not config.output:
        raise LLMPruneError("--stream writes each pruned block straight to disk; give --output")
    if config.eval_ppl or config.ppl or config.tasks:
        raise LLMPruneError("evaluation needs the whole model in memory; run `llmprune eval` on the output folder after --stream")
    if config.save_format != "dense":
        raise LLMPruneError("--stream writes dense safetensors only; drop --save-format sparse")
    return prune_streaming(
        config.model, config.output, method=config.method, sparsity=sparsity, pattern=config.pattern,
        calibration=config.calibration, nsamples=config.nsamples, seqlen=config.seqlen, seed=config.seed,
        targets=config.targets, ignore=config.ignore, dtype=config.dtype, device=config.device,
        batch_size=config.batch_size, overwrite=config.overwrite, progress=config.progress,
        owl=config.owl, owl_m=config.owl_m, owl_lambda=config.owl_lambda, **config.method_options,
    )


def _run_in_memory(config, sparsity) -> dict:
    from .io.writer import check_free_space, model_bytes

    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    if config.output:
        check_free_space(Path(config.output).expanduser().absolute().parent, model_bytes(model))
    evaluation = {}
    if config.eval_ppl:
        evaluation["ppl_before"] = _wikipedia_ppl(model, tokenizer, config)
    report = prune(
        model, tokenizer, method=config.method, sparsity=sparsity, pattern=config.pattern,
        calibration=config.calibration, nsamples=config.nsamples, seqlen=config.seqlen, seed=config.seed,
        targets=config.targets, ignore=config.ignore, device=config.device, batch_size=config.batch_size,
        progress=config.progress, owl=config.owl, owl_m=config.owl_m, owl_lambda=config.owl_lambda,
        **config.method_options,
    )
    report["model"] = config.model
    if config.eval_ppl:
        evaluation["ppl_after"] = _wikipedia_ppl(model, tokenizer, config)
        evaluation.update({"dataset": "wikipedia:test", "seqlen": config.eval_seqlen, "windows": config.eval_windows})
    if config.ppl or config.tasks:
        from .evaluate import evaluate

        evaluation["results"] = evaluate(
            model, tokenizer, ppl=config.ppl, tasks=config.tasks, seqlen=config.eval_seqlen,
            max_windows=config.eval_windows, batch_size=config.eval_batch_size or 4,
            num_fewshot=config.num_fewshot, progress=config.progress,
            limit=int(config.limit) if config.limit and config.limit >= 1 else config.limit,  # lm-eval: float = fraction
        )
    if evaluation:
        report["eval"] = evaluation
    if config.output:
        options = {"save_format": config.save_format} if config.save_format != "dense" else {}
        report["output"] = str(save_pretrained(model, tokenizer, config.output, report, overwrite=config.overwrite, **options))
    return report


def write_report_file(path: str | Path, report: dict) -> Path:
    import json
    import os

    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target
