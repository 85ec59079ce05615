"""One iterative-magnitude-pruning runner for every domain: rounds, controls, trials, resume.

Per seed: round 0 trains the dense model; round r (1..N) rewinds (to the initial or
pretrained values, or to those after K steps of round 0), trains under the mask and, from the
trained magnitudes, derives the next round's mask through the pruning rule. Controls at
every level, with the same training budget, are defined by where their mask and their
weights come from (``CONTROL_KINDS``): the ticket's mask with fresh weights (``reinit``), a
random mask with the rewind weights (``random-mask``), the dense model's one-shot mask with
the rewind weights (``one-shot``), a per-layer shuffle of the ticket's mask with fresh weights
(``permuted``). What differs between domains (model, data, training loop, metric, fresh
initialisation) is the domain object; see ``bert/bert_domain.py`` and
``scratch/vision_domain.py``.

Every job writes into its own folder under the run folder, ``metrics.json`` last, so a killed
run started again with the same command skips what is finished and redoes only the job that
was cut off; every job seeds its own randomness, so redoing it gives the same numbers.

A domain with ``train_many`` (``scratch/vision_domain.py``) trains independent jobs as one
stacked model: stage r holds every seed's ticket of round r and its controls of round r (they
need only the mask the ticket of round r - 1 derived), cut into fixed chunks of
``parallel_jobs``; a chunk cut off by a kill trains again whole, so every job is redone in the
same company.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import LLMPruneError
from .ticket_masks import Masks, dense_masks, load_masks, save_masks
from .pruning_rules import kept, shuffle_within_layers

RUN_FILE = "run.json"
# control -> (where its mask comes from, where its weights come from)
CONTROL_KINDS = {
    "reinit": ("ticket", "fresh"),
    "random-mask": ("random", "rewind"),
    "one-shot": ("one-shot", "rewind"),
    "permuted": ("shuffled", "fresh"),
}


class Domain(Protocol):
    """What one kind of experiment supplies to the runner."""

    def new_model(self, seed: int) -> nn.Module: ...  # the model at its initial weights for this seed
    def prunable(self, model: nn.Module) -> dict[str, torch.Tensor]: ...  # name -> weight, model order
    def reinitialise(self, model: nn.Module, params: dict, seed: int) -> None: ...  # fresh prunable weights
    def reset_at_rewind(self, model: nn.Module) -> set[str]: ...  # keys late rewinding puts back to step 0
    def total_steps(self) -> int: ...
    def train(self, model: nn.Module, masks: Masks | None, seed: int,
              on_step: Callable[[int], None] | None, desc: str) -> dict: ...  # {"steps": n, ...metrics}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a kill leaves the old file or the new one, never half of one


def read_done(folder: Path) -> dict | None:
    path = folder / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def measured_sparsity(params: dict[str, torch.Tensor]) -> float:
    """Exact zeros among the prunable weights, as they are now (not as the mask says)."""
    zeros = sum(int((p == 0).sum()) for p in params.values())
    return zeros / sum(p.numel() for p in params.values())


class RunDir:
    """Where one run keeps its state; refuses to mix runs with different settings.

    ``settings`` are the options that change numbers; ``defaults`` their values for a run
    recorded before a setting existed.
    """

    def __init__(self, root: str | Path, settings: dict, defaults: dict, overwrite: bool = False):
        self.root = Path(root).expanduser()
        run_file = self.root / RUN_FILE
        if self.root.exists() and overwrite:
            if not run_file.is_file() and any(self.root.iterdir()):
                raise LLMPruneError(f"{self.root} is not a lottery-ticket run folder (no {RUN_FILE}); refusing to delete it")
            shutil.rmtree(self.root)
        if run_file.is_file():
            stored = dict(defaults)
            stored.update(json.loads(run_file.read_text(encoding="utf-8")))
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            # a run that finished no job yet has nothing to protect: its settings may change
            if changed and any(self.root.glob("seed-*/*/metrics.json")):
                raise LLMPruneError(
                    f"{self.root} holds a run with other settings ({', '.join(changed)}); "
                    "use another --output, or --overwrite to start again"
                )
        elif self.root.exists() and any(self.root.iterdir()):
            raise LLMPruneError(f"{self.root} exists and is not a lottery-ticket run folder; choose another --output")
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(run_file, settings)

    def job(self, seed: int, kind: str, round_index: int) -> Path:
        return self.root / f"seed-{seed}" / f"{kind}-r{round_index}"

    def rewind_file(self, seed: int) -> Path:
        return self.root / f"seed-{seed}" / "rewind.pt"


class IMPRunner:
    """Runs (or resumes) every job of every seed; ``controls`` maps a control's name to its kind."""

    def __init__(self, domain: Domain, rule, seeds: list[int], run_dir: RunDir, controls: dict[str, str],
                 ticket_kind: str = "ticket", rewind_step: int = 0, control_min_sparsity: float = 0.0,
                 progress: bool = True, parallel_jobs: int | None = 1):
        unknown = sorted(set(controls.values()) - set(CONTROL_KINDS))
        if unknown:
            raise LLMPruneError(f"unknown control kind(s) {', '.join(unknown)}")
        if rewind_step > domain.total_steps():
            raise LLMPruneError(f"--rewind step:{rewind_step} is past the end of training ({domain.total_steps()} steps)")
        self.domain, self.rule, self.seeds, self.dir = domain, rule, list(seeds), run_dir
        self.controls, self.ticket_kind, self.rewind_step = dict(controls), ticket_kind, rewind_step
        self.control_min_sparsity, self.progress = control_min_sparsity, progress
        # jobs trained as one stacked model (domains with ``train_many``): None as many as can, 1 none
        self.parallel_jobs = parallel_jobs
        self.seconds = 0.0

    def level(self, round_index: int) -> float:
        return 0.0 if round_index == 0 else self.rule.levels[round_index - 1]

    def job_names(self) -> list[tuple[str, int]]:
        rounds = range(1, self.rule.rounds + 1)
        jobs = [(self.ticket_kind, r) for r in range(self.rule.rounds + 1)]
        # controls may be limited to the sparse end, where the comparison is the point
        sparse = [r for r in rounds if self.level(r) >= self.control_min_sparsity - 1e-9]
        return jobs + [(c, r) for r in sparse for c in self.controls]

    def run(self) -> list[dict]:
        total = len(self.seeds) * len(self.job_names())
        results = []
        with tqdm(total=total, desc="IMP", disable=not self.progress) as outer:
            if self.stacks():
                return self.run_stacked(outer)
            for seed in self.seeds:
                results.extend(self.run_seed(seed, outer))
        return results

    def stacks(self) -> bool:
        """Whether jobs train together: allowed, a domain that can, and a network that stacks."""
        if self.parallel_jobs == 1 or not hasattr(self.domain, "train_many"):
            return False
        if not self.domain.stacks(self.domain.new_model(self.seeds[0])):
            tqdm.write("this network does not stack (only plain Sequential Linear/Conv2d/ReLU/MaxPool2d nets do): "
                       "training one job at a time")
            return False
        return True

    # -- jobs trained together ---------------------------------------------------------
    def stages(self) -> list[list[tuple[int, str, int]]]:
        """Jobs grouped by when they can start: stage r holds every trial's ticket of round r and
        its controls of round r, which need only the mask the ticket of round r - 1 derived
        (and, for one-shot, round 0's magnitudes). Each stage is cut into chunks of at most
        ``parallel_jobs``, the same chunks every time, so a resumed chunk trains as it did."""
        jobs = self.job_names()
        chunks = []
        for r in range(self.rule.rounds + 1):
            stage = [(seed, kind, rr) for seed in self.seeds for kind, rr in jobs if rr == r]
            size = self.parallel_jobs or len(stage)
            chunks += [stage[i:i + size] for i in range(0, len(stage), size)]
        return chunks

    def run_stacked(self, outer: tqdm) -> list[dict]:
        found: dict[tuple[int, str, int], dict] = {}
        initial: dict[int, dict] = {}
        for chunk in self.stages():
            done = [read_done(self.dir.job(*job)) for job in chunk]
            if all(done):
                found.update(zip(chunk, done))
                outer.update(len(chunk))
                continue
            # a chunk cut off part way trains again whole, so every job sees the same company
            models, masks, all_params = [], [], []
            for seed, kind, r in chunk:
                model = self.domain.new_model(seed)
                if seed not in initial:
                    initial[seed] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                params = self.domain.prunable(model)
                start = initial[seed] if r == 0 else self.rewind_state(seed, initial[seed])
                masks.append(self._prepare(seed, kind, r, model, params, start))
                models.append(model)
                all_params.append(params)
            r = chunk[0][2]
            outer.set_description(f"round {r} ({1 - self.level(r):.1%} left): {len(chunk)} jobs together")
            began, began_cpu = time.perf_counter(), time.process_time()
            trained = self.domain.train_many(models, [None if r == 0 else m for m in masks],
                                             [seed for seed, _, _ in chunk], [f"{k} r{r}" for _, k, r in chunk],
                                             snapshot_step=self.rewind_step if r == 0 else 0)
            seconds = (time.perf_counter() - began) / len(chunk)
            cpu_seconds = (time.process_time() - began_cpu) / len(chunk)
            self.seconds += seconds * len(chunk)
            for job, result, model, params, job_masks, out in zip(chunk, done, models, all_params, masks, trained):
                seed, kind, r = job
                snapshot = out.pop("snapshot", None)
                if result is None:
                    if self._captures(kind, r):
                        self._save_rewind(seed, model, snapshot)
                    result = self._finish(seed, kind, r, params, job_masks, out, seconds, cpu_seconds, len(chunk))
                    tqdm.write(f"seed {seed} {kind:<13} round {r} remaining {result['remaining']:.1%} "
                               f"({result['seconds']:.0f} s per job, {len(chunk)} together)")
                found[job] = result
                outer.update(1)
        return [found[(seed, kind, r)] for seed in self.seeds for kind, r in self.job_names()]

    # -- one seed ---------------------------------------------------------------------
    def run_seed(self, seed: int, outer: tqdm) -> list[dict]:
        jobs = self.job_names()
        done = [read_done(self.dir.job(seed, kind, r)) for kind, r in jobs]
        if all(done):
            outer.update(len(jobs))
            return done
        model = self.domain.new_model(seed)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        params = self.domain.prunable(model)
        results = []
        for (kind, r), result in zip(jobs, done):
            if result is None:
                outer.set_description(f"seed {seed} {kind} round {r} ({1 - self.level(r):.1%} left)")
                start = initial if r == 0 else self.rewind_state(seed, initial)
                result = self._job(seed, kind, r, model, params, start)
                tqdm.write(f"seed {seed} {kind:<13} round {r} remaining {result['remaining']:.1%} "
                           f"({result['seconds']:.0f} s)")
            outer.update(1)
            results.append(result)
        return results

    def rewind_state(self, seed: int, initial: dict) -> dict:
        """The weights rounds >= 1 start from: the initial ones, or round 0's after step K."""
        if self.rewind_step == 0:
            return initial
        path = self.dir.rewind_file(seed)
        if not path.is_file():
            raise LLMPruneError(f"{path} is missing; start the run again with --overwrite")
        return torch.load(path, weights_only=True)

    def _job(self, seed: int, kind: str, r: int, model, params: dict, start: dict) -> dict:
        masks = self._prepare(seed, kind, r, model, params, start)
        capture = self._capture_rewind(seed, model) if self._captures(kind, r) else None
        began, began_cpu = time.perf_counter(), time.process_time()
        # the same data order and dropout in every round of a seed, as in the paper
        trained = self.domain.train(model, None if r == 0 else masks, seed, capture, f"{kind} r{r}")
        seconds = time.perf_counter() - began
        # CPU time of this process (all its threads): a figure that other users' load on a
        # shared machine inflates far less than wall time
        cpu_seconds = time.process_time() - began_cpu
        self.seconds += seconds
        return self._finish(seed, kind, r, params, masks, trained, seconds, cpu_seconds)

    def _captures(self, kind: str, r: int) -> bool:
        return kind == self.ticket_kind and r == 0 and self.rewind_step > 0

    def _prepare(self, seed: int, kind: str, r: int, model, params: dict, start: dict) -> Masks:
        """The job's mask, and its starting weights loaded into ``model``."""
        masks = self.masks_for(seed, kind, r, params)
        model.load_state_dict(start)
        if kind != self.ticket_kind and CONTROL_KINDS[self.controls[kind]][1] == "fresh":
            self.domain.reinitialise(model, params, seed * 1000 + r)
        return masks

    def _finish(self, seed: int, kind: str, r: int, params: dict, masks: Masks, trained: dict, seconds: float,
                cpu_seconds: float, jobs_together: int = 1) -> dict:
        """Saves the job's mask (and, for a ticket, the next round's), then its metrics, last."""
        folder = self.dir.job(seed, kind, r)
        folder.mkdir(parents=True, exist_ok=True)
        save_masks(masks, folder / "mask.pt")
        if kind == self.ticket_kind:
            self._next_masks(seed, r, params, masks)
        result = {"seed": seed, "kind": kind, "round": r, "sparsity": self.level(r),
                  "remaining": kept(masks) / sum(m.numel() for m in masks.values()),
                  "measured_sparsity": measured_sparsity(params), **trained,
                  "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}
        if jobs_together > 1:
            result["jobs_trained_together"] = jobs_together  # seconds: this job's share of the stacked run
        write_json(folder / "metrics.json", result)
        return result

    def masks_for(self, seed: int, kind: str, r: int, params: dict) -> Masks:
        if r == 0:
            return dense_masks(params)
        ticket = load_masks(self.dir.job(seed, self.ticket_kind, r - 1) / "next_mask.pt")
        source = "ticket" if kind == self.ticket_kind else CONTROL_KINDS[self.controls[kind]][0]
        if source == "random":
            return self.rule.random(params, ticket, r, seed * 1000 + r)
        if source == "shuffled":
            return shuffle_within_layers(ticket, seed * 1000 + r)
        if source == "one-shot":
            return load_masks(self.dir.job(seed, self.ticket_kind, 0) / f"one-shot-r{r}.pt")
        return ticket  # the mask the ticket derived at the end of the previous round

    def _next_masks(self, seed: int, r: int, params: dict, masks: Masks) -> None:
        folder = self.dir.job(seed, self.ticket_kind, r)
        if r < self.rule.rounds:
            save_masks(self.rule.masks(params, r + 1, masks), folder / "next_mask.pt")
        if r == 0 and "one-shot" in self.controls.values():
            # one-shot: every level pruned at once from the dense trained magnitudes
            for index in range(1, self.rule.rounds + 1):
                save_masks(self.rule.masks(params, index), folder / f"one-shot-r{index}.pt")

    def _capture_rewind(self, seed: int, model):
        reset = self.domain.reset_at_rewind(model)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items() if k in reset}

        def on_step(step: int) -> None:
            if step == self.rewind_step:
                # late rewinding: the weights after K steps (a BERT head back at its initial values)
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                state.update(initial)
                self._write_rewind(seed, state)

        return on_step

    def _save_rewind(self, seed: int, model, snapshot: dict) -> None:
        """The rewind point of a job trained with others: its weights after K steps (``snapshot``)."""
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state.update({k: v.cpu() for k, v in snapshot.items()})
        self._write_rewind(seed, state)

    def _write_rewind(self, seed: int, state: dict) -> None:
        path = self.dir.rewind_file(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def ticket_masks(self, seed: int, round_index: int) -> Masks:
        return load_masks(self.dir.job(seed, self.ticket_kind, round_index) / "mask.pt")
