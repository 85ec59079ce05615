"""The options of a pruning job: the one place their defaults live, and the machinery every job's options share.

``PruneOptions`` says how to prune (the Python ``llmprune.prune`` takes it, or its fields as keywords);
``RunOptions`` adds what the ``llmprune`` command does around it (which model, where to save, what to
evaluate). The CLI's flags are generated from these fields (name, type, help and default), YAML recipes
(``configs/*.yaml``) use the same names, and ``validate()`` checks a job's values once, before any work.

This module imports no torch and nothing of the engine (``tests/test_job_shell.py`` checks it in a fresh
interpreter): the engine objects a job needs (its method, target, layer selection, after-prune steps) are built
from these options by ``llmprune.api.build``, which also refuses what only the engine can judge (an N:M
pattern, a method's keywords). The name tables below are the engine's choices, named here so the flags need no
engine import: the expert and reconstruction modules import theirs from here, and a test checks that
``METHODS`` names the methods of ``llmprune.methods``.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import LLMPruneError

DEFAULT_SPARSITY = 0.5
SAVE_FORMATS = ("dense", "sparse", "gguf")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q4_k_m")
DTYPE_CHOICES = ("float32", "bfloat16", "float16")
ALLOCATIONS = ("uniform", "owl", "ramp", "auto")
METHODS = ("magnitude", "wanda", "sparsegpt", "ria", "admm")  # llmprune.methods.METHODS
EXPERT_STATISTICS = ("routed", "all-tokens")  # llmprune.engine.experts
EXPERT_FALLBACKS = ("all-tokens", "magnitude")
MIN_EXPERT_TOKENS = 64
RECONSTRUCT_TARGETS = ("teacher", "local")  # llmprune.reconstruct
RECONSTRUCT_PARTS = ("block", "separate")
RECONSTRUCT_LOSSES = ("mse", "token")


def option(default: Any, help: str, group: str | None = None, **metadata: Any) -> Any:
    """A dataclass field that also describes its command-line flag.

    ``metadata``: ``flag`` (another spelling, e.g. ``--no-progress``), ``choices``, ``metavar``, ``shown``
    (the default as ``--help`` should word it). ``llmprune.cli.dataclass_flags`` reads them.
    """
    metadata = {"help": help, "group": group, **metadata}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def shared_option(cls: type, name: str, default: Any = MISSING, **metadata: Any) -> Any:
    """A fresh field with the default, help and flag metadata of ``cls``'s field ``name`` (``default`` and
    ``metadata`` replace some, e.g. the help), so another job's options reuse one option instead of restating it."""
    source = {f.name: f for f in fields(cls)}[name]
    if default is MISSING:
        default = source.default_factory() if source.default is MISSING else source.default
    merged = {**source.metadata, **metadata}
    return option(default, merged.pop("help"), merged.pop("group"), **merged)


def asks_perplexity(ppl: str | list[str] | None) -> bool:
    """``--ppl`` names a source: ``none`` or ``off`` (how ``--help`` shows the default) asks for none."""
    text = ",".join(ppl) if isinstance(ppl, (list, tuple)) else (ppl or "")
    return text.strip().lower() not in ("", "none", "off")


@dataclass
class PruneOptions:
    """How to prune: method, target, which layers, calibration, allocation."""

    method: str = option("wanda", f"pruning method: {', '.join(METHODS)}", "what to prune")
    sparsity: float | None = option(None, "fraction of weights to remove in [0, 1)", "what to prune", shown=f"{DEFAULT_SPARSITY} unless --pattern")
    pattern: str | None = option(None, "N:M semi-structured sparsity instead, e.g. 2:4 or 4:8", "what to prune")
    targets: list[str] | None = option(None, "comma-separated layer names/globs to prune", "what to prune", shown="every linear layer in the blocks")
    ignore: list[str] | None = option(None, "comma-separated layer names/globs to leave alone, e.g. 'mlp.down_proj' or 're:.*\\.0\\..*'", "what to prune")
    allocation: str = option("uniform", "per-block sparsities (unstructured only; the mean over pruned weights stays --sparsity): uniform; owl (outlier-weighted, see --owl-m/--owl-lambda); ramp (rising with depth by --ramp-step per block); auto (the best of uniform, OWL and ramps by the loss on held-out calibration windows, never the test split; in memory only, about six prunes)", "what to prune", choices=ALLOCATIONS)
    owl: bool = option(False, "shorthand for --allocation owl", "what to prune")
    ramp_step: float = option(0.005, "depth ramp: sparsity added per block of depth (negative prunes early blocks more)", "what to prune")
    heldout_windows: int = option(8, "--allocation auto: held-out calibration windows (drawn from the train split with seed + 1) scoring the candidates", "what to prune")
    owl_m: float = option(5.0, "OWL: a score above M x the block's mean is an outlier", "what to prune")
    owl_lambda: float = option(0.08, "OWL: block sparsities stay within sparsity +- lambda", "what to prune")
    reconstruct: bool = option(False, "block reconstruction: after pruning each block, train its surviving weights with Adam so its outputs match the dense block's (mask kept)", "reconstruction")
    reconstruct_target: str = option("teacher", "what the pruned block should reproduce: teacher (the dense model's own activations) or local (the dense block on the pruned stream's inputs)", "reconstruction", choices=RECONSTRUCT_TARGETS)
    reconstruct_parts: str = option("block", "train the whole block against its output, or separate: the attention and MLP parts one after the other, each against its own output", "reconstruction", choices=RECONSTRUCT_PARTS)
    reconstruct_loss: str = option("mse", "what reconstruction minimises, and what its held-out error and roll-back measure: mse (the squared error over every entry of the block's output) or token (each token's squared error relative to its target's, averaged over tokens: the error the next RMSNorm sees, which a few huge outlier entries cannot dominate, as Qwen2.5's do)", "reconstruction", choices=RECONSTRUCT_LOSSES)
    reconstruct_steps: int = option(32, "Adam steps per block (per part with separate), one micro-batch each", "reconstruction")
    reconstruct_lr: float = option(1e-3, "Adam learning rate of block reconstruction", "reconstruction")
    reconstruct_batch_size: int = option(4, "calibration windows per reconstruction step", "reconstruction")
    reconstruct_norms: bool = option(False, "also train the block's normalisation weights", "reconstruction")
    reconstruct_rollback: bool = option(True, "keep a block's training even when it makes the block's error on the held-out calibration windows worse (by default such a block is rolled back to its pruned weights and the report lists it)", "reconstruction", flag="--no-reconstruct-rollback")
    min_expert_tokens: int = option(MIN_EXPERT_TOKENS, "MoE: a routed expert that receives fewer calibration tokens falls back (see --expert-fallback)", "what to prune")
    expert_fallback: str = option(EXPERT_FALLBACKS[0], "MoE: statistics for an expert below --min-expert-tokens: all-tokens (every token through that expert) or magnitude", "what to prune", choices=EXPERT_FALLBACKS)
    expert_statistics: str = option(EXPERT_STATISTICS[0], "MoE: routed (each expert from the tokens routed to it) or all-tokens (every expert from every token)", "what to prune", choices=EXPERT_STATISTICS)
    calibration: str = option("wikipedia", "wikipedia (bundled train split), code (the Python standard library's sources, train split), a .txt/.jsonl/.json file, or a hub dataset", "calibration")
    nsamples: int = option(128, "calibration windows", "calibration")
    seqlen: int = option(2048, "tokens per calibration window (capped at the model's limit)", "calibration")
    seed: int = option(0, "seed for the window offsets", "calibration")
    batch_size: int | None = option(None, "windows per forward chunk", "calibration", shown="all at once when they fit in memory")
    device: str = option("auto", "cpu, cuda or auto; only the block being pruned sits on it", "hardware")
    progress: bool = option(True, "hide progress bars", "output and evaluation", flag="--no-progress")
    method_options: dict = option({}, "extra keyword arguments of the method (YAML and Python only)", "what to prune")

    def allocation_name(self) -> str:
        return "owl" if self.owl and self.allocation == "uniform" else self.allocation

    def validate(self) -> None:
        """Every check of a value on its own: bad values fail here, before anything is loaded (what needs the
        engine to judge, such as an N:M pattern or a method's keywords, ``llmprune.api.build`` refuses next)."""
        allocation = self.allocation_name()
        if allocation not in ALLOCATIONS:
            raise LLMPruneError(f"unknown allocation '{self.allocation}' (use {', '.join(ALLOCATIONS)})")
        if self.owl and self.allocation not in ("uniform", "owl"):
            raise LLMPruneError(f"--owl and --allocation {self.allocation} ask for two allocations; give one")
        if allocation == "auto" and self.heldout_windows < 1:
            raise LLMPruneError(f"--heldout-windows must be at least 1, got {self.heldout_windows}")
        if isinstance(self.method, str) and self.method not in METHODS:  # (Python may pass a method object)
            raise LLMPruneError(f"unknown method '{self.method}' (choose from {', '.join(METHODS)})")
        check_expert_options(self.expert_statistics, self.min_expert_tokens, self.expert_fallback)
        check_calibration_options(self)
        if self.reconstruct:
            check_reconstruct_options(self.reconstruct_target, self.reconstruct_parts, self.reconstruct_steps,
                                      self.reconstruct_lr, self.reconstruct_batch_size, self.reconstruct_loss)


def check_calibration_options(options) -> None:
    """The calibration sizes every job that calibrates shares (``nsamples``, ``seqlen``, ``batch_size``)."""
    for name in ("nsamples", "seqlen"):
        if int(getattr(options, name)) < 1:
            raise LLMPruneError(f"--{name} must be at least 1, got {getattr(options, name)}")
    if options.batch_size is not None and options.batch_size < 1:
        raise LLMPruneError(f"--batch-size must be at least 1, got {options.batch_size}")


def check_expert_options(statistics: str, min_tokens: int, fallback: str) -> None:
    if statistics not in EXPERT_STATISTICS:
        raise LLMPruneError(f"unknown expert statistics '{statistics}' (use {' or '.join(EXPERT_STATISTICS)})")
    if fallback not in EXPERT_FALLBACKS:
        raise LLMPruneError(f"unknown expert fallback '{fallback}' (use {' or '.join(EXPERT_FALLBACKS)})")
    if min_tokens < 0:
        raise LLMPruneError(f"--min-expert-tokens must be at least 0, got {min_tokens}")


def check_reconstruct_options(target: str, parts: str, steps: int, lr: float, batch_size: int,
                              loss: str = "mse") -> None:
    """Bad reconstruction settings fail before anything is loaded."""
    if loss not in RECONSTRUCT_LOSSES:
        raise LLMPruneError(f"unknown --reconstruct-loss '{loss}' (use {' or '.join(RECONSTRUCT_LOSSES)})")
    if target not in RECONSTRUCT_TARGETS:
        raise LLMPruneError(f"unknown --reconstruct-target '{target}' (use {' or '.join(RECONSTRUCT_TARGETS)})")
    if parts not in RECONSTRUCT_PARTS:
        raise LLMPruneError(f"unknown --reconstruct-parts '{parts}' (use {' or '.join(RECONSTRUCT_PARTS)})")
    if int(steps) < 0:
        raise LLMPruneError(f"--reconstruct-steps must be at least 0, got {steps}")
    if not float(lr) > 0:
        raise LLMPruneError(f"--reconstruct-lr must be positive, got {lr}")
    if int(batch_size) < 1:
        raise LLMPruneError(f"--reconstruct-batch-size must be at least 1, got {batch_size}")


@dataclass
class RunOptions(PruneOptions):
    """The ``llmprune`` command's job: load, (evaluate), prune, (evaluate), save, (push)."""

    model: str = option("llama", "alias, model folder, .gguf file or hub id", "what to prune")
    dtype: str | None = option(None, "weights dtype", "hardware", choices=DTYPE_CHOICES, shown="float32 on CPU, bfloat16 on GPU")
    stream: bool = option(False, "stream the model from its safetensors one block at a time (automatic when it does not fit in memory)", "hardware")
    output: str | None = option(None, "folder for the pruned model and llmprune_report.json", "output and evaluation")
    overwrite: bool = option(False, "replace an existing output folder", "output and evaluation")
    save_format: str = option("dense", "dense safetensors (loads anywhere), compressed sparse (llmprune's loader reads it back) or gguf (one llama.cpp file in the output folder, see --gguf-type)", "output and evaluation", choices=SAVE_FORMATS)
    gguf_type: str = option("f16", "--save-format gguf: how weight matrices are stored (q6_k and q4_k_m by llama.cpp's quantizer: needs llama-cpp-python)", "output and evaluation", choices=GGUF_TYPES)
    push_to_hub: str | None = option(None, "upload the output folder to the Hugging Face Hub afterwards", "output and evaluation", metavar="REPO_ID")
    report: str | None = option(None, "also write the report JSON here (the only output when --output is not given)", "output and evaluation")
    eval_ppl: bool = option(False, "perplexity on the bundled Wikipedia test split before and after", "output and evaluation")
    eval_seqlen: int = option(512, "perplexity window length", "output and evaluation")
    eval_windows: int | None = option(None, "at most this many perplexity windows", "output and evaluation", shown="all")
    ppl: str | None = option(None, "after pruning: comma-separated perplexity sources (wikipedia, code, wikitext2, ptb, c4, a file)", "evaluation", metavar="SOURCES")
    tasks: str | None = option(None, "after pruning: comma-separated lm-eval tasks (offline: wiki_next, wiki_lastword, wiki_ppl, rt_sentiment, wiki_topic, code_next, code_name)", "evaluation", metavar="T1,T2")
    num_fewshot: int | None = option(None, "few-shot examples per lm-eval task", "evaluation", shown="the task's own")
    limit: float | None = option(None, "at most this many documents per lm-eval task (below 1: a fraction)", "evaluation")
    eval_batch_size: int | None = option(None, "windows / lm-eval requests per forward pass", "evaluation", shown="4")

    def prune_options(self) -> PruneOptions:
        return PruneOptions(**{f.name: getattr(self, f.name) for f in fields(PruneOptions)})

    def evaluates(self) -> bool:
        return bool(self.eval_ppl or asks_perplexity(self.ppl) or self.tasks)

    def validate(self) -> None:
        super().validate()
        if self.save_format not in SAVE_FORMATS:
            raise LLMPruneError(f"unknown save format '{self.save_format}' (use {', '.join(SAVE_FORMATS)})")
        if self.gguf_type not in GGUF_TYPES:
            raise LLMPruneError(f"unknown GGUF type '{self.gguf_type}' (use {', '.join(GGUF_TYPES)})")
        if self.push_to_hub and not self.output:
            raise LLMPruneError("--push-to-hub needs --output (the folder that is uploaded)")
        if self.stream:
            if not self.output:
                raise LLMPruneError("--stream writes each pruned block straight to disk; give --output")
            if self.evaluates():
                raise LLMPruneError("evaluation needs the whole model in memory; run `llmprune eval` on the output folder after --stream")
            if self.save_format != "dense":
                raise LLMPruneError("--stream writes dense safetensors only; drop --save-format sparse")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "RunOptions":
        """A recipe, with ``overrides`` (the flags given) replacing its keys and whatever they conflict with."""
        return from_recipe(cls, path, **overrides)


# A key given on the command line replaces these recipe keys too: a recipe's sparsity gives way to a
# --pattern flag (and the other way round) instead of failing with "not both".
CONFLICTS = {"pattern": ("sparsity",), "sparsity": ("pattern",)}


def read_recipe(path: str | Path, cls: type) -> dict:
    """The option: value pairs of a YAML recipe, keys as field names (``no-progress: true`` is
    ``progress: false``), unknown keys refused."""
    file = Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise LLMPruneError(f"config file not found: {file}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise LLMPruneError(f"cannot read config {file}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise LLMPruneError(f"config {file} must be a mapping of option: value")
    renamed = {f.metadata["flag"].lstrip("-").replace("-", "_"): f.name for f in fields(cls) if f.metadata.get("flag")}
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in renamed:  # a switch spelt as its flag: the flag flips the default
            values[renamed[name]] = not value
        else:
            values[name] = value
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise LLMPruneError(f"config {file}: unknown option(s) {', '.join(unknown)}")
    return values


def merge_recipe(recipe: dict, overrides: dict) -> dict:
    merged = dict(recipe)
    for key, value in overrides.items():
        for loser in CONFLICTS.get(key, ()):
            if loser not in overrides:
                merged.pop(loser, None)
        merged[key] = value
    return merged


def from_recipe(cls: type, path: str | Path, **overrides):
    """An options object: the class's defaults < the recipe at ``path`` < ``overrides`` (the flags typed)."""
    return cls(**merge_recipe(read_recipe(path, cls), overrides))


def defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of an options class."""
    out = {}
    for f in fields(cls):
        out[f.name] = f.default_factory() if f.default is MISSING else f.default
    return out


def with_overrides(options: Any | None, cls: type = PruneOptions, **overrides) -> Any:
    """``options`` (or ``cls``'s defaults) with keyword overrides: the one override path of every job's options.

    A keyword that is not a field goes to the method where the class has ``method_options`` (SparseGPT's
    ``blocksize``), and fails in one line where it has not."""
    base = options if options is not None else cls()
    known = {f.name for f in fields(base)}
    unknown = {k: v for k, v in overrides.items() if k not in known}
    if "method_options" not in known:
        if unknown:
            kind = type(base).__name__.removesuffix("Options").removesuffix("Run").lower()
            raise LLMPruneError(f"unknown {kind} option(s) {', '.join(sorted(unknown))}")
        return replace(base, **overrides)
    method_options = dict(base.method_options)
    method_options.update(overrides.pop("method_options", None) or {})
    method_options.update(unknown)
    return replace(base, **{k: v for k, v in overrides.items() if k in known}, method_options=method_options)
