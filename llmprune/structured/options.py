"""The options of a shrink job: the one place their defaults live.

``ShrinkOptions`` says how to shrink (``llmprune.shrink`` takes it, or its fields as keywords);
``ShrinkRunOptions`` adds what ``llmprune shrink`` does around it (which model, where to save, what
to evaluate). The command's flags are generated from these fields (``cli/dataclass_flags.py``), and
the options shared with pruning (calibration, block reconstruction, evaluation, output) are the
pruning options' own fields (``shared_option``), so they are spelt, documented and defaulted once.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import LLMPruneError
from ..options import PruneOptions, RunOptions, asks_perplexity, option, shared_option, with_overrides as options_with_overrides
from ..reconstruct import BlockReconstruction, check_reconstruct_options
from .blocks import BLOCK_SCORES
from .plan import UNITS, parse_units
from .scores import SCORES

# What the consumer's kept columns are re-fitted to reproduce: ``local``, the layer's own outputs on the
# shrunk model's inputs; ``teacher``, the dense model's outputs of that layer (its inputs gathered from the
# dense model's own hidden states in the same pass), meant to correct the errors of earlier blocks too.
# Measured on the bundled model (R = 0.25, hessian, 512-token windows; eval/results/shrink.md): the teacher
# target is worse (mlp,heads, 32 calibration windows, 16 test windows: 176.7 against 26.15 for local;
# 8 windows: mlp 44.5 vs 34.5, mlp,heads 81.0 vs 43.5). Regressing the dense outputs on inputs that only
# partly predict them shrinks the re-fitted weights towards zero, and the shrinkage compounds block after
# block; so ``local`` is the default.
REFIT_TARGETS = ("local", "teacher")
WHAT = "what to remove"
RECONSTRUCTION = "reconstruction"


@dataclass
class ShrinkOptions:
    """How to shrink: how much, which units, how they are ranked and compensated, calibration, healing."""

    ratio: float = option(0.25, "fraction of the decoder blocks' parameters to remove, in (0, 1)", WHAT)
    # auto: on the bundled SmolLM2 at R = 0.25 (64 x 512 calibration, 64 test windows) mlp,blocks with the
    # bridge measured 24.62, mlp,heads 27.06 (eval/results/shrink.md); without the bridge blocks are poor.
    units: str = option("auto", f"comma-separated mix of {', '.join(UNITS)}, or auto: mlp,blocks where the family "
                        "allows the removed blocks' bridge (see --no-block-correction), else mlp,heads where its config "
                        "accepts fewer heads, else mlp; heads,blocks for a mixture-of-experts MLP", WHAT)
    # obs by default: 27.06 against 27.63 for hessian on the bundled model (R = 0.25, mlp,heads, 64 x 512
    # calibration, 64 test windows), in less than 2x a plain forward of the calibration batch.
    score: str = option("obs", "how channels and heads are ranked: magnitude (weights only), wanda (Wanda-sp), "
                        "fluctuation (FLAP), hessian (||W_j||^2 H_jj, the fastest calibrated score), obs (greedy optimal "
                        "brain surgeon on H: each choice counts the re-fit of the channels that stay)",
                        WHAT, choices=SCORES)
    block_score: str = option("angular", "how blocks are ranked: angular (ShortGPT's block influence), span (the "
                              "contiguous run whose input and output are closest in angle) or loss (the calibration loss "
                              "with that block skipped: one forward of 8 calibration windows per block)", WHAT, choices=BLOCK_SCORES)
    block_correction: bool = option(True, "do not fold a least-squares linear map that stands in for each removed run of "
                                    "blocks into the MLP output layer of the kept block before it (ReplaceMe-style; "
                                    "families with a norm after the MLP, Gemma 2/3, never get it)", WHAT,
                                    flag="--no-block-correction")
    multiple_of: int = option(64, "MLP widths are multiples of this (256 for llama.cpp k-quants; small models need "
                              "finer steps to reach a ratio closely)", WHAT)
    compensate: bool = option(True, "do not re-fit the consumers' kept columns by least squares", WHAT, flag="--no-compensate")
    refit_target: str = option("local", "what the re-fitted consumer (down_proj, o_proj) reproduces: local (its own "
                               "outputs on the shrunk model's inputs) or teacher (the dense model's outputs of that layer; "
                               "measured worse on SmolLM2, see eval/results/shrink.md)", WHAT, choices=REFIT_TARGETS)
    # 1e-4 gave 29.1 against 30.8 for 1e-2 on the bundled model (mlp, hessian, R = 0.25, 16 x 512, 16 windows).
    damp: float = option(1e-4, "least-squares damping, a fraction of the Hessian's mean diagonal", WHAT)
    reconstruct: bool = shared_option(PruneOptions, "reconstruct", help=(
        "block reconstruction: after shrinking each block, train all its kept weights with Adam so its outputs "
        "match the dense block's"))
    # Local by default here: a shrunk block's own error is what training can remove. Measured on the bundled
    # model (R = 0.25, mlp,heads, 32 x 512 calibration, 16 test windows; eval/results/shrink.md): local
    # 25.43, teacher 26.50, no reconstruction 26.15. The teacher's target also asks the block to undo the
    # drift of every earlier block, which mostly passes by it on the residual path.
    reconstruct_target: str = shared_option(PruneOptions, "reconstruct_target", default="local", help=(
        "what the shrunk block should reproduce: local (the dense block on the shrunk stream's inputs) or "
        "teacher (the dense model's own activations)"))
    reconstruct_parts: str = shared_option(PruneOptions, "reconstruct_parts")
    reconstruct_loss: str = shared_option(PruneOptions, "reconstruct_loss")
    reconstruct_steps: int = shared_option(PruneOptions, "reconstruct_steps")
    reconstruct_lr: float = shared_option(PruneOptions, "reconstruct_lr")
    reconstruct_batch_size: int = shared_option(PruneOptions, "reconstruct_batch_size")
    reconstruct_norms: bool = shared_option(PruneOptions, "reconstruct_norms")
    reconstruct_rollback: bool = shared_option(PruneOptions, "reconstruct_rollback")
    distill_steps: int = option(0, "after shrinking, train every weight this many AdamW steps so the model's next-token "
                                "distributions match the dense model's on the calibration windows (knowledge distillation; "
                                "a copy of the dense model stays in memory meanwhile; 0: off)", RECONSTRUCTION)
    distill_lr: float = option(1e-4, "learning rate of the distillation (cosine schedule to 0)", RECONSTRUCTION)
    distill_batch_size: int = option(4, "calibration windows per distillation step", RECONSTRUCTION)
    calibration: str = shared_option(PruneOptions, "calibration")
    nsamples: int = shared_option(PruneOptions, "nsamples")
    seqlen: int = shared_option(PruneOptions, "seqlen")
    seed: int = shared_option(PruneOptions, "seed")
    batch_size: int | None = shared_option(PruneOptions, "batch_size")
    device: str = shared_option(PruneOptions, "device")
    progress: bool = shared_option(PruneOptions, "progress")

    def parsed_units(self) -> tuple[str, ...] | None:
        """The unit mix, or None for ``auto`` (resolved for the model by ``plan.plan_shrink``)."""
        return parse_units(self.units)

    def validate(self) -> tuple[str, ...] | None:
        """Every option error that needs no model, before any work; returns the units (None: auto).
        What depends on the model (units it has, head counts its config accepts) is ``plan_shrink``'s."""
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio < 1:
            raise LLMPruneError(f"ratio must be in (0, 1), got {self.ratio}")
        units = self.parsed_units()
        if self.score not in SCORES:
            raise LLMPruneError(f"unknown score '{self.score}' (use {', '.join(SCORES)})")
        if self.block_score not in BLOCK_SCORES:
            raise LLMPruneError(f"unknown block score '{self.block_score}' (use {', '.join(BLOCK_SCORES)})")
        if self.refit_target not in REFIT_TARGETS:
            raise LLMPruneError(f"unknown --refit-target '{self.refit_target}' (use {' or '.join(REFIT_TARGETS)})")
        if int(self.multiple_of) < 1:
            raise LLMPruneError(f"--multiple-of must be a positive integer, got {self.multiple_of}")
        if not float(self.damp) >= 0:
            raise LLMPruneError(f"--damp must be at least 0, got {self.damp}")
        for name in ("nsamples", "seqlen"):
            if int(getattr(self, name)) < 1:
                raise LLMPruneError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise LLMPruneError(f"--batch-size must be at least 1, got {self.batch_size}")
        if int(self.distill_steps) < 0:
            raise LLMPruneError(f"--distill-steps must be at least 0, got {self.distill_steps}")
        if not float(self.distill_lr) > 0:
            raise LLMPruneError(f"--distill-lr must be positive, got {self.distill_lr}")
        if int(self.distill_batch_size) < 1:
            raise LLMPruneError(f"--distill-batch-size must be at least 1, got {self.distill_batch_size}")
        if self.reconstruct:
            check_reconstruct_options(self.reconstruct_target, self.reconstruct_parts, self.reconstruct_steps,
                                      self.reconstruct_lr, self.reconstruct_batch_size, self.reconstruct_loss)
        return units

    def reconstruction(self) -> BlockReconstruction | None:
        """The block reconstruction step this job asks for; a shrunk block has no mask, so all its weights train."""
        if not self.reconstruct:
            return None
        return BlockReconstruction(self.reconstruct_target, self.reconstruct_parts, self.reconstruct_steps,
                                   self.reconstruct_lr, self.reconstruct_batch_size, self.reconstruct_norms,
                                   progress=self.progress, masked=False, rollback=self.reconstruct_rollback,
                                   loss=self.reconstruct_loss)

    def teacher_refit(self) -> bool:
        return bool(self.compensate) and self.refit_target == "teacher"


def with_overrides(options: ShrinkOptions | None, **overrides) -> ShrinkOptions:
    """``options`` (or the defaults) with keyword overrides, through the one override path of every job's
    options; an unknown keyword fails in one line."""
    return options_with_overrides(options, ShrinkOptions, **overrides)


def _run_option(name: str, **metadata):
    return shared_option(RunOptions, name, **metadata)


@dataclass
class ShrinkRunOptions(ShrinkOptions):
    """The ``llmprune shrink`` job: load, (evaluate), shrink, (evaluate), save."""

    model: str = _run_option("model", group=WHAT)
    dtype: str | None = _run_option("dtype")
    output: str | None = _run_option("output", help="folder for the shrunk model and llmprune_report.json")
    overwrite: bool = _run_option("overwrite")
    # A shrunk model is dense: safetensors, or one llama.cpp file (sparse is refused by validate).
    save_format: str = _run_option("save_format", help=(
        "dense safetensors (loads anywhere) or gguf (one llama.cpp file in the output folder, see --gguf-type); "
        "a shrunk model has nothing sparse to store"))
    gguf_type: str = _run_option("gguf_type")
    report: str | None = _run_option("report")
    eval_ppl: bool = _run_option("eval_ppl")
    eval_seqlen: int = _run_option("eval_seqlen")
    eval_windows: int | None = _run_option("eval_windows")
    ppl: str | None = _run_option("ppl", help="after shrinking: comma-separated perplexity sources (wikipedia, wikitext2, ptb, c4, a file)")
    tasks: str | None = _run_option("tasks", help="after shrinking: comma-separated lm-eval tasks (offline: wiki_next, wiki_lastword, wiki_ppl, rt_sentiment, wiki_topic)")
    num_fewshot: int | None = _run_option("num_fewshot")
    limit: float | None = _run_option("limit")
    eval_batch_size: int | None = _run_option("eval_batch_size")

    def evaluates(self) -> bool:
        return bool(self.eval_ppl or asks_perplexity(self.ppl) or self.tasks)

    def shrink_options(self) -> ShrinkOptions:
        return ShrinkOptions(**{f.name: getattr(self, f.name) for f in fields(ShrinkOptions)})

    def validate(self) -> tuple[str, ...] | None:
        units = super().validate()
        if self.eval_windows is not None and self.eval_windows < 1:
            raise LLMPruneError(f"--eval-windows must be at least 1, got {self.eval_windows}")
        if self.save_format not in ("dense", "gguf"):
            raise LLMPruneError(f"shrink saves dense or gguf, not '{self.save_format}'")
        if self.save_format == "gguf":
            from ..io.gguf_export import parse_gguf_type

            parse_gguf_type(self.gguf_type)
        return units
