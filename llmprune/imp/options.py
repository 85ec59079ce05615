"""The one options object per lottery-ticket job, and YAML recipes that fill it.

Defaults live in these dataclasses and nowhere else: the CLI derives its flags (and the
defaults ``--help`` shows) from the fields, recipes (``configs/imp-*.yaml``) name the same
fields, and ``__post_init__`` validates whatever filled them, once. Each field's ``help``
metadata is the flag's help text; ``flag`` renames a flag (``progress`` -> ``--no-progress``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import LLMPruneError
from ..options import from_recipe, option

BERT_BASELINES = ("random-prune", "random-reinit", "one-shot")
LTH_CONTROLS = ("reinit", "random-mask", "one-shot")
PRESETS = ("lenet", "conv2", "conv4", "conv6", "sum-of-two")


def parse_name_list(value, allowed: tuple, what: str) -> list[str]:
    """A comma string or list of names, or all / none, in the canonical order of ``allowed``."""
    names = [str(v) for v in value] if isinstance(value, (list, tuple)) else \
        [v.strip() for v in str(value or "").split(",") if v.strip()]
    if names == ["all"]:
        return list(allowed)
    if names in (["none"], []):
        return []
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise LLMPruneError(f"unknown {what} {', '.join(unknown)} (use {', '.join(allowed)}, all or none)")
    return [n for n in allowed if n in names]


def parse_rewind(spec: str) -> int:
    """0 for rewinding to the start (``pretrained`` / ``init``), K for ``step:K``."""
    if spec in ("pretrained", "init"):
        return 0
    if spec.startswith("step:") and spec[5:].isdigit() and int(spec[5:]) > 0:
        return int(spec[5:])
    raise LLMPruneError(f"unknown --rewind '{spec}' (use init, pretrained or step:K with K a positive step count)")


class RecipeMixin:
    @classmethod
    def from_recipe(cls, path: str | Path, **overrides):
        """A recipe's values, then ``overrides`` on top (what flags do on the command line)."""
        return from_recipe(cls, path, **overrides)


@dataclass
class IMPConfig(RecipeMixin):
    """Lottery tickets in a pretrained BERT-family encoder (Chen et al. 2020)."""

    model: str = option("minilm", "BERT-family encoder: a folder, a hub id, or the alias bert/minilm")
    task: str = option("rt-polarity", "cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte (GLUE, needs the network or a "
                       "cache), rt-polarity, wiki-topic (offline), or a .csv/.jsonl file with text and label columns")
    output: str | None = option(None, "run folder: state, reports and the ticket", shown="imp-<task>")
    eval_file: str | None = option(None, "validation file for a .csv/.jsonl task",
                                  shown="a fixed tenth of the task file")
    schedule: str = option("linear", "linear: --rate of the original weights more per round; geometric: --rate of "
                           "the remaining per round", choices=("linear", "geometric"))
    rounds: int | None = option(None, "pruning rounds after the dense one",
                               shown="linear up to 90%, geometric 10")
    target_sparsity: float | None = option(None, "final sparsity; an error if --rounds cannot reach it")
    rate: float | None = option(None, "fraction pruned per round (linear: of the original; geometric: of the "
                                "remaining)", shown="linear 0.1, geometric 0.2")
    rewind: str = option("pretrained", "pretrained, or step:K: late rewinding to the weights after K fine-tuning steps")
    seeds: int = option(1, "repeat everything with this many seeds")
    seed: int = option(0, "first seed")
    baselines: list = option([], "comma list of random-prune, random-reinit, one-shot; or all / none")
    baseline_min_sparsity: float = option(0.0, "run the baselines only at levels of at least this sparsity")
    epochs: float = option(1.0, "fine-tuning epochs per round")
    lr: float = option(2e-5, "learning rate")
    batch_size: int = option(32, "batch size")
    max_length: int = option(128, "tokens per example, longer ones truncated")
    max_train_samples: int | None = option(None, "train on a fixed subset of this many examples")
    max_eval_samples: int | None = option(None, "evaluate on a fixed subset of this many examples")
    weight_decay: float = option(0.0, "AdamW weight decay")
    precision: str = option("no", "mixed precision through accelerate (bf16 is about 4x faster on CPUs with AMX)",
                            choices=("no", "bf16", "fp16"))
    device: str = option("auto", "auto, cpu or cuda")
    progress: bool = option(True, "no progress bars", flag="--no-progress")
    overwrite: bool = option(False, "delete an existing run in --output and start again")

    def __post_init__(self):
        from .schedule import sparsity_schedule

        self.baselines = parse_name_list(self.baselines, BERT_BASELINES, "baseline(s)")
        parse_rewind(self.rewind)
        if self.rewind == "init":
            raise LLMPruneError("BERT tickets rewind to the pretrained weights: use --rewind pretrained or step:K")
        sparsity_schedule(self.schedule, self.rounds, self.target_sparsity, self.rate)
        if self.seeds < 1:
            raise LLMPruneError("--seeds must be at least 1")
        if self.output is None:
            task = str(self.task)
            self.output = f"imp-{Path(task).stem if task.endswith(('.csv', '.jsonl')) else task}"


@dataclass
class LTHConfig(RecipeMixin):
    """The original lottery-ticket experiments (Frankle & Carbin 2019). ``None`` means: the preset's value
    (``shown`` says which, in ``--help``)."""

    preset: str = option("lenet", "the paper's protocol: lenet, conv2, conv4, conv6, or the toy sum-of-two", choices=PRESETS)
    data: str | None = option(None, "fashion-mnist, mnist1d, mnist, cifar10 (these two need the network), or a folder "
                              "of IDX files or a data.npz", shown="fashion-mnist; cifar10 for conv presets")
    output: str | None = option(None, "run folder: state, reports, plots and the winning ticket",
                                shown="lth-<preset>")
    hidden: str | None = option(None, "hidden widths of a fully connected net, e.g. 500,500", shown="lenet 300,100")
    rounds: int | None = option(None, "pruning rounds after the dense one",
                                shown="15; sum-of-two: until 2 weights per layer remain")
    rate: float | None = option(None, "share of each fully connected layer's surviving weights pruned per round",
                                shown="0.2; sum-of-two 0.25")
    conv_rate: float | None = option(None, "the same for convolutions", shown="conv2/conv4 0.1, conv6 0.15")
    output_rate: float | None = option(None, "the same for the output layer", shown="half of --rate")
    pruning: str = option("layerwise", "layerwise (each layer by its own rate) or global (one threshold for all "
                          "layers, at --rate)", choices=("layerwise", "global"))
    iterations: int | None = option(None, "training iterations per round",
                                    shown="lenet 50000, conv2 20000, conv4 25000, conv6 30000")
    lr: float | None = option(None, "Adam learning rate", shown="lenet 1.2e-3, conv2 2e-4, conv4/conv6 3e-4")
    batch_size: int | None = option(None, "batch size", shown="60")
    eval_every: int = option(100, "evaluate validation and test every this many iterations")
    validation_size: int | None = option(None, "validation examples drawn from the training set with the seed",
                                         shown="5000; mnist1d 500")
    trials: int = option(1, "repeat everything with this many seeds; the report gives mean, min and max")
    controls: list = option([], "comma list of reinit, random-mask, one-shot; or all / none (sum-of-two always runs "
                            "reinit and a permuted ticket on its final ticket)")
    rewind: str | None = option(None, "init, or step:K: late rewinding to the weights after K iterations",
                                shown="init; sum-of-two step:1")
    seed: int = option(0, "first seed")
    parallel_jobs: int | None = option(None, "train up to this many independent jobs (trials, a round's controls "
                                       "beside its ticket) as one stacked model; 1: one model at a time",
                                       shown="as many as the schedule allows")
    device: str = option("auto", "auto, cpu or cuda")
    progress: bool = option(True, "no progress bars", flag="--no-progress")
    overwrite: bool = option(False, "delete an existing run in --output and start again")

    def __post_init__(self):
        self.controls = parse_name_list(self.controls, LTH_CONTROLS, "control(s)")
        if self.rewind is not None:
            parse_rewind(self.rewind)
        if self.rewind == "pretrained":
            raise LLMPruneError("lottery tickets from scratch rewind to init or step:K (pretrained is for BERT)")
        for name in ("rounds", "iterations", "batch_size", "eval_every", "trials", "validation_size", "parallel_jobs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LLMPruneError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        for name in ("rate", "conv_rate", "output_rate"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise LLMPruneError(f"--{name.replace('_', '-')} must be between 0 and 1 (got {value})")
        if self.hidden is not None:
            parse_hidden(self.hidden)
        if self.output is None:
            self.output = f"lth-{self.preset}"


def parse_hidden(spec) -> list[int]:
    if isinstance(spec, (list, tuple)):
        parts = [str(p) for p in spec]
    else:
        parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise LLMPruneError(f"--hidden must be positive widths separated by commas, e.g. 300,100 (got '{spec}')")
    return [int(p) for p in parts]
