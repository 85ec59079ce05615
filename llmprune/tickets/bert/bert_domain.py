"""The BERT domain: lottery tickets in a pretrained encoder fine-tuned on a text task (Chen et al. 2020).

The shared runner does the rounds, controls, resume and rewinding; this file says what a
BERT job is: the classifier (pretrained body, a fresh head from the seed), its prunable
matrices, fine-tuning under a mask, the task metric, BERT's own initialiser for the
random re-initialisation control, and the ticket as a model folder. The head always
restarts from its initial values. Pruning is global (one threshold over all matrices) on
the linear or geometric schedule.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields

import torch

from .encoder import load_classifier, prunable_parameters
from .features import Encoded
from .task_metrics import main_metric
from ..pruning_rules import GlobalRule
from ..runner import IMPRunner, RunDir
from ..ticket_options import parse_rewind
from .imp_options import IMPOptions
from .schedule import sparsity_schedule
from .text_tasks import Task, load_task, subsample
from .fine_tuning import TrainSettings, evaluate, fine_tune

# the report's names for the runner's control kinds
BASELINE_KINDS = {"random-prune": "random-mask", "random-reinit": "reinit", "one-shot": "one-shot"}
# settings that do not change any number, so a resumed run may differ in them
NOT_COMPARED = ("output", "progress", "device", "overwrite")


class BertDomain:
    def __init__(self, config: IMPOptions):
        self.config = config
        self.task: Task = load_task(config.task, config.eval_file)
        self.metric = main_metric(self.task.metric)
        self.settings = TrainSettings(config.epochs, config.lr, config.batch_size, config.weight_decay,
                                      config.precision, config.device, config.progress)
        self._data = None
        self.tokenizer = None

    def new_model(self, seed: int):
        model, self.tokenizer, _ = load_classifier(self.config.model, self.task.num_labels, seed)
        return model

    def prunable(self, model) -> dict:
        return prunable_parameters(model)

    @torch.no_grad()
    def reinitialise(self, model, params: dict, seed: int) -> None:
        """Fresh N(0, std) weights (BERT's own initialiser) for the prunable matrices."""
        generator = torch.Generator().manual_seed(seed)
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=generator) * model.config.initializer_range)

    def reset_at_rewind(self, model) -> set[str]:
        return {k for k in model.state_dict() if not k.startswith(model.base_model_prefix + ".")}

    def total_steps(self) -> int:
        train_size = len(subsample(self.task.train, self.config.max_train_samples))
        return round(-(-train_size // self.config.batch_size) * self.config.epochs)

    def data(self) -> tuple[Encoded, dict[str, Encoded]]:
        if self._data is None:
            reg, n = self.task.is_regression, self.config.max_length
            train = Encoded(self.tokenizer, subsample(self.task.train, self.config.max_train_samples), n, reg)
            evals = {split: Encoded(self.tokenizer, subsample(ex, self.config.max_eval_samples), n, reg)
                     for split, ex in self.task.eval_sets.items()}
            self._data = (train, evals)
        return self._data

    def train(self, model, masks, seed: int, on_step, desc: str) -> dict:
        train, evals = self.data()
        steps = fine_tune(model, train, self.settings, masks, seed, on_step=on_step, desc=desc)
        metrics = evaluate(model, evals, self.task.metric, self.task.is_regression, 4 * self.config.batch_size)
        return {"metrics": metrics, "steps": steps}


def run_imp(config: IMPOptions) -> dict:
    """Run (or resume) everything, then write the report, the plot and the winning ticket."""
    from .imp_report import build_report, write_report
    from .ticket_folder import save_ticket

    levels = sparsity_schedule(config.schedule, config.rounds, config.target_sparsity, config.rate)
    domain = BertDomain(config)
    compared = {k: v for k, v in asdict(config).items() if k not in NOT_COMPARED}
    defaults = {f.name: getattr(IMPOptions(), f.name) for f in fields(IMPOptions) if f.name not in NOT_COMPARED}
    runner = IMPRunner(domain, GlobalRule(levels), [config.seed + i for i in range(config.seeds)],
                       RunDir(config.output, compared, defaults, config.overwrite),
                       {b: BASELINE_KINDS[b] for b in config.baselines}, ticket_kind="imp",
                       rewind_step=parse_rewind(config.rewind), control_min_sparsity=config.baseline_min_sparsity,
                       progress=config.progress)
    results = runner.run()
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "overwrite")}
    report = build_report(results, levels, domain.metric, settings)
    report["timing"]["this_invocation_train_and_eval_seconds"] = round(runner.seconds, 1)
    paths = write_report(report, runner.dir.root, f"{domain.task.name}: lottery tickets ({config.model})")
    report["files"] = {k: str(v) for k, v in paths.items()}
    best_round = report["highest_matching_round"]
    report["ticket"] = None
    if best_round > 0:
        seed = config.seed
        model = domain.new_model(seed)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        row = report["rows"][best_round]
        ticket_report = {"kind": "lottery-ticket", "task": domain.task.name, "seed": seed,
                         "sparsity": row["sparsity"], "rewind": config.rewind,
                         "metric_after_fine_tuning": {domain.metric: row["imp"]["per_seed"][0]},
                         "dense_metric": report["dense"], "settings": settings,
                         "label_names": domain.task.label_names}
        folder = save_ticket(model, domain.tokenizer, runner.rewind_state(seed, initial),
                             runner.ticket_masks(seed, best_round), runner.dir.root / "ticket", ticket_report)
        report["ticket"] = str(folder)
    (runner.dir.root / "imp_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
