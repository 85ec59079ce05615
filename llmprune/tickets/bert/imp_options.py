"""The options of one BERT lottery-ticket job (``llmprune imp``); ``configs/imp-*.yaml`` recipes fill it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import LLMPruneError
from ...options import option
from ..ticket_options import RecipeMixin, parse_name_list, parse_rewind
from .schedule import sparsity_schedule

BERT_BASELINES = ("random-prune", "random-reinit", "one-shot")


@dataclass
class IMPOptions(RecipeMixin):
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

    def validate(self) -> None:
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
