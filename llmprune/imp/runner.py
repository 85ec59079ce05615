"""Running IMP with its baselines over seeds, one resumable job at a time.

Per seed: round 0 fine-tunes the dense model; round r (1..N) rewinds the surviving weights
(to the pretrained values, or to those after K steps of round 0), fine-tunes under the mask
and, from the trained magnitudes, derives the next round's mask. Baselines at every level:
``random-prune`` (random mask, pretrained weights), ``random-reinit`` (the IMP mask, fresh
random weights) and ``one-shot`` (mask from the dense fine-tuned magnitudes, then the same
fine-tuning from the rewind point). The classifier head always restarts from its initial
values.

Every job writes into its own folder under ``--output``, ``metrics.json`` last, so a killed run
started again with the same command skips what is finished and redoes only the job that was
cut off; every job seeds its own randomness, so redoing it gives the same numbers.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import LLMPruneError
from .encoder import load_classifier, prunable_parameters
from .features import Encoded
from .masks import (Masks, dense_masks, global_magnitude_masks, load_masks, random_masks, save_masks)
from .metrics import main_metric
from .schedule import sparsity_schedule
from .tasks import Task, load_task, subsample
from .train import TrainSettings, evaluate, fine_tune

BASELINES = ("random-prune", "random-reinit", "one-shot")
RUN_FILE = "run.json"
# settings that do not change any number, so a resumed run may differ in them
NOT_COMPARED = ("output", "progress", "device", "overwrite")


@dataclass
class IMPConfig:
    model: str = "minilm"
    task: str = "rt-polarity"
    output: str = "imp-run"
    eval_file: str | None = None
    schedule: str = "linear"
    rounds: int | None = 5
    target_sparsity: float | None = None
    rate: float | None = None
    rewind: str = "pretrained"
    seeds: int = 1
    seed: int = 0
    baselines: list = field(default_factory=list)
    baseline_min_sparsity: float = 0.0
    epochs: float = 1.0
    lr: float = 2e-5
    batch_size: int = 32
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    weight_decay: float = 0.0
    precision: str = "no"
    device: str = "auto"
    progress: bool = True
    overwrite: bool = False


def parse_rewind(spec: str) -> int:
    """0 for ``pretrained``, K for ``step:K``."""
    if spec == "pretrained":
        return 0
    if spec.startswith("step:") and spec[5:].isdigit() and int(spec[5:]) > 0:
        return int(spec[5:])
    raise LLMPruneError(f"unknown --rewind '{spec}' (use pretrained or step:K with K a positive step count)")


def check_baselines(names: list) -> list:
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise LLMPruneError(f"unknown baseline(s) {', '.join(unknown)} (use {', '.join(BASELINES)}, all or none)")
    return [n for n in BASELINES if n in names]  # canonical order


class RunDir:
    """Where one run keeps its state; refuses to mix runs with different settings."""

    def __init__(self, config: IMPConfig):
        self.root = Path(config.output).expanduser()
        wanted = {k: v for k, v in asdict(config).items() if k not in NOT_COMPARED}
        run_file = self.root / RUN_FILE
        if self.root.exists() and config.overwrite:
            if not run_file.is_file() and any(self.root.iterdir()):
                raise LLMPruneError(f"{self.root} is not an IMP run folder (no {RUN_FILE}); refusing to delete it")
            shutil.rmtree(self.root)
        if run_file.is_file():
            # settings added to llmprune after the run was started count at their defaults
            stored = {k: v for k, v in asdict(IMPConfig()).items() if k not in NOT_COMPARED}
            stored.update(json.loads(run_file.read_text(encoding="utf-8")))
            changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            # a run that finished no job yet has nothing to protect: its settings may change
            if changed and any(self.root.glob("seed-*/*/metrics.json")):
                raise LLMPruneError(
                    f"{self.root} holds a run with other settings ({', '.join(changed)}); "
                    "use another --output, or --overwrite to start again"
                )
        elif self.root.exists() and any(self.root.iterdir()):
            raise LLMPruneError(f"{self.root} exists and is not an IMP run folder; choose another --output")
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json(run_file, wanted)

    def job(self, seed: int, kind: str, round_index: int) -> Path:
        return self.root / f"seed-{seed}" / f"{kind}-r{round_index}"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a kill leaves the old file or the new one, never half of one


def _read_done(folder: Path) -> dict | None:
    path = folder / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def measured_sparsity(params: dict[str, torch.Tensor]) -> float:
    """Exact zeros among the prunable weights, as they are now (not as the mask says)."""
    zeros = sum(int((p == 0).sum()) for p in params.values())
    return zeros / sum(p.numel() for p in params.values())


@torch.no_grad()
def reinitialise(params: dict[str, torch.Tensor], std: float, seed: int) -> None:
    """Fresh N(0, std) weights (BERT's own initialiser) for the prunable matrices."""
    generator = torch.Generator().manual_seed(seed)
    for p in params.values():
        p.copy_(torch.randn(p.shape, generator=generator) * std)


class IMPRun:
    """The state shared by all jobs of a run: task data, settings, schedule, run folder."""

    def __init__(self, config: IMPConfig):
        self.config = config
        self.baselines = check_baselines(list(config.baselines))
        self.rewind_step = parse_rewind(config.rewind)
        self.levels = sparsity_schedule(config.schedule, config.rounds, config.target_sparsity, config.rate)
        if config.seeds < 1:
            raise LLMPruneError("--seeds must be at least 1")
        self.task: Task = load_task(config.task, config.eval_file)
        self.metric = main_metric(self.task.metric)
        train_size = len(subsample(self.task.train, config.max_train_samples))
        steps = round(-(-train_size // config.batch_size) * config.epochs)
        if self.rewind_step > steps:
            raise LLMPruneError(f"--rewind step:{self.rewind_step} is past the end of fine-tuning ({steps} steps)")
        self.settings = TrainSettings(config.epochs, config.lr, config.batch_size, config.weight_decay,
                                      config.precision, config.device, config.progress)
        self.dir = RunDir(config)
        self._data = None
        self.seconds = 0.0

    # -- data -----------------------------------------------------------------------
    def data(self, tokenizer) -> tuple[Encoded, dict[str, Encoded]]:
        if self._data is None:
            reg, n = self.task.is_regression, self.config.max_length
            train = Encoded(tokenizer, subsample(self.task.train, self.config.max_train_samples), n, reg)
            evals = {split: Encoded(tokenizer, subsample(ex, self.config.max_eval_samples), n, reg)
                     for split, ex in self.task.eval_sets.items()}
            self._data = (train, evals)
        return self._data

    def job_names(self) -> list[tuple[str, int]]:
        jobs = [("imp", r) for r in range(len(self.levels) + 1)]
        # baselines may be limited to the sparse end, where the comparison is the point
        rounds = [r for r in range(1, len(self.levels) + 1) if self.level(r) >= self.config.baseline_min_sparsity - 1e-9]
        return jobs + [(b, r) for r in rounds for b in self.baselines]

    def level(self, round_index: int) -> float:
        return 0.0 if round_index == 0 else self.levels[round_index - 1]

    # -- one seed ---------------------------------------------------------------------
    def run_seed(self, seed: int, outer: tqdm) -> list[dict]:
        jobs = self.job_names()
        done = [_read_done(self.dir.job(seed, kind, r)) for kind, r in jobs]
        if all(done):
            outer.update(len(jobs))
            return done
        model, tokenizer, _ = load_classifier(self.config.model, self.task.num_labels, seed)
        train, evals = self.data(tokenizer)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        params = prunable_parameters(model)
        rewind = self._rewind_state(seed, initial, params)
        results = []
        for (kind, r), result in zip(jobs, done):
            if result is None:
                outer.set_description(f"seed {seed} {kind} round {r} ({self.level(r):.0%})")
                result = self._job(seed, kind, r, model, params, initial if r == 0 else rewind(), train, evals)
                tqdm.write(f"seed {seed} {kind:<13} round {r} sparsity {result['sparsity']:.1%}: "
                           f"{self.metric} {result['metrics'][self.metric]:.4f} ({result['seconds']:.0f} s)")
            outer.update(1)
            results.append(result)
        return results

    def _rewind_state(self, seed: int, initial: dict, params: dict):
        """The weights rounds >= 1 start from: pretrained (+ initial head), or round 0's step-K body."""
        path = self.dir.root / f"seed-{seed}" / "rewind.pt"

        def state() -> dict:
            if self.rewind_step == 0:
                return initial
            if not path.is_file():
                raise LLMPruneError(f"{path} is missing; start the run again with --overwrite")
            return torch.load(path, weights_only=True)

        return state

    def _job(self, seed: int, kind: str, r: int, model, params: dict, start: dict, train: Encoded,
             evals: dict) -> dict:
        folder = self.dir.job(seed, kind, r)
        folder.mkdir(parents=True, exist_ok=True)
        masks = self._masks_for(seed, kind, r, params)
        model.load_state_dict(start)
        if kind == "random-reinit":
            reinitialise(params, model.config.initializer_range, seed * 1000 + r)
        capture = self._capture_rewind(seed, model) if kind == "imp" and r == 0 and self.rewind_step else None
        began, began_cpu = time.perf_counter(), time.process_time()
        steps = fine_tune(model, train, self.settings, None if r == 0 else masks, seed, on_step=capture,
                          desc=f"{kind} r{r}")
        metrics = evaluate(model, evals, self.task.metric, self.task.is_regression, 4 * self.config.batch_size)
        seconds = time.perf_counter() - began
        # CPU time of this process (all its threads): a figure that other users' load on a
        # shared machine inflates far less than wall time
        cpu_seconds = time.process_time() - began_cpu
        self.seconds += seconds
        save_masks(masks, folder / "mask.pt")
        if kind == "imp":
            self._next_masks(seed, r, params, masks)
        result = {"seed": seed, "kind": kind, "round": r, "sparsity": self.level(r),
                  "measured_sparsity": measured_sparsity(params), "metrics": metrics, "steps": steps,
                  "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}
        _write_json(folder / "metrics.json", result)
        return result

    def _masks_for(self, seed: int, kind: str, r: int, params: dict) -> Masks:
        if r == 0:
            return dense_masks(params)
        if kind == "random-prune":
            return random_masks(params, self.level(r), seed * 1000 + r)
        if kind == "one-shot":
            return load_masks(self.dir.job(seed, "imp", 0) / f"one-shot-r{r}.pt")
        # imp and random-reinit: the mask IMP derived at the end of the previous round
        return load_masks(self.dir.job(seed, "imp", r - 1) / "next_mask.pt")

    def _next_masks(self, seed: int, r: int, params: dict, masks: Masks) -> None:
        folder = self.dir.job(seed, "imp", r)
        if r < len(self.levels):
            save_masks(global_magnitude_masks(params, self.levels[r], masks), folder / "next_mask.pt")
        if r == 0 and "one-shot" in self.baselines:
            # one-shot: every level pruned at once from the dense fine-tuned magnitudes
            for index, level in enumerate(self.levels, start=1):
                save_masks(global_magnitude_masks(params, level), folder / f"one-shot-r{index}.pt")

    def _capture_rewind(self, seed: int, model):
        path = self.dir.root / f"seed-{seed}" / "rewind.pt"
        head = {k for k in model.state_dict() if not k.startswith(model.base_model_prefix + ".")}
        initial_head = {k: v.detach().clone() for k, v in model.state_dict().items() if k in head}

        def on_step(step: int) -> None:
            if step == self.rewind_step:
                # late rewinding: the body after K steps, the head back at its initial values
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                state.update(initial_head)
                tmp = path.with_suffix(".tmp")
                torch.save(state, tmp)
                tmp.replace(path)

        return on_step

    def run(self) -> list[dict]:
        seeds = [self.config.seed + i for i in range(self.config.seeds)]
        total = len(seeds) * len(self.job_names())
        results = []
        with tqdm(total=total, desc="IMP", disable=not self.config.progress) as outer:
            for seed in seeds:
                results.extend(self.run_seed(seed, outer))
        return results

    def ticket_masks(self, seed: int, round_index: int) -> Masks:
        return load_masks(self.dir.job(seed, "imp", round_index) / "mask.pt")


def run_imp(config: IMPConfig) -> dict:
    """Run (or resume) everything, then write the report, the plot and the winning ticket."""
    from .report import build_report, write_report
    from .ticket import save_ticket

    imp = IMPRun(config)
    results = imp.run()
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "overwrite")}
    report = build_report(results, imp.levels, imp.metric, settings)
    report["timing"]["this_invocation_train_and_eval_seconds"] = round(imp.seconds, 1)
    paths = write_report(report, imp.dir.root, f"{imp.task.name}: lottery tickets ({config.model})")
    report["files"] = {k: str(v) for k, v in paths.items()}
    best_round = report["highest_matching_round"]
    if best_round > 0:
        seed = config.seed
        model, tokenizer, _ = load_classifier(config.model, imp.task.num_labels, seed)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rewind = imp._rewind_state(seed, initial, prunable_parameters(model))()
        row = report["rows"][best_round]
        ticket_report = {"kind": "lottery-ticket", "task": imp.task.name, "seed": seed,
                         "sparsity": row["sparsity"], "rewind": config.rewind,
                         "metric_after_fine_tuning": {imp.metric: row["imp"]["per_seed"][0]},
                         "dense_metric": report["dense"], "settings": settings,
                         "label_names": imp.task.label_names}
        folder = save_ticket(model, tokenizer, rewind, imp.ticket_masks(seed, best_round),
                             imp.dir.root / "ticket", ticket_report)
        report["ticket"] = str(folder)
    else:
        report["ticket"] = None
    (imp.dir.root / "imp_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
