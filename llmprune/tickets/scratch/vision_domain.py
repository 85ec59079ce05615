"""The vision / MLP domain: the original lottery-ticket experiments (Frankle & Carbin, ICLR 2019).

A job trains a small network from its initialisation with Adam (a fresh optimiser every job,
so no moment carries over from a pruned weight) for a fixed number of iterations over
tensors held in memory, re-applies the mask after every step, and evaluates validation and
test every ``eval_every`` iterations; the early-stopping iteration is the one with the
lowest validation loss, and test accuracy is reported there and at the end. The shared
runner does rounds, controls, trials, resume and rewinding; ``lth_report`` writes the report,
CSV and plots. The presets hold the paper's protocol; every value can be overridden.
``train_many`` trains K such jobs at once as one stacked model (``stacked.py``): the same
jobs, up to float rounding, for a fraction of the per-job cost.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...errors import LLMPruneError
from ..pruning_rules import GlobalRule, LayerwiseRule
from ..runner import IMPRunner, RunDir
from ..ticket_masks import Masks
from ..ticket_options import parse_rewind
from .lth_options import LTHOptions, parse_hidden
from .stacked import StackedNet, stackable
from .vision_data import Dataset, load_data
from .vision_models import CONV_BLOCKS, build_model, glorot_gaussian_, prunable_weights

# The paper's protocol (shared/ALGORITHMS.md). rate: fully connected layers, conv_rate:
# convolutions, output_rate: the output layer (None: half of rate); rounds None: until every
# layer is down to min_keep weights.
PRESETS: dict[str, dict] = {
    "lenet": dict(architecture="mlp", data="fashion-mnist", hidden="300,100", iterations=50_000, lr=1.2e-3,
                  batch_size=60, rate=0.2, conv_rate=None, output_rate=None, rounds=15, rewind="init", min_keep=1),
    "conv2": dict(architecture="conv2", data="cifar10", hidden=None, iterations=20_000, lr=2e-4, batch_size=60,
                  rate=0.2, conv_rate=0.1, output_rate=None, rounds=15, rewind="init", min_keep=1),
    "conv4": dict(architecture="conv4", data="cifar10", hidden=None, iterations=25_000, lr=3e-4, batch_size=60,
                  rate=0.2, conv_rate=0.1, output_rate=None, rounds=15, rewind="init", min_keep=1),
    "conv6": dict(architecture="conv6", data="cifar10", hidden=None, iterations=30_000, lr=3e-4, batch_size=60,
                  rate=0.2, conv_rate=0.15, output_rate=None, rounds=15, rewind="init", min_keep=1),
    # the toy: 25% of each layer per round until two weights per layer remain, rewinding to
    # the weights after the first iteration; controls only on the final four-weight ticket
    "sum-of-two": dict(architecture="sum-of-two", data="sum-of-two", hidden="200", iterations=2000, lr=1e-2,
                       batch_size=100, rate=0.25, conv_rate=None, output_rate=0.25, rounds=None, rewind="step:1",
                       min_keep=2),
}
SHOW_WEIGHTS_UP_TO = 16  # a ticket this small has its trained weights in the report
SUM_OF_TWO_CONTROLS = {"reinit": "reinit", "permuted": "permuted"}
# settings that do not change any number, so a resumed run may differ in them
# (parallel_jobs changes only the float rounding of the batched matmuls; see the README)
NOT_COMPARED = ("output", "progress", "device", "overwrite", "parallel_jobs")


@dataclass
class Protocol:
    """Every value of one run, the preset filled in under what the user set."""

    preset: str
    architecture: str
    data: str
    hidden: list[int] | None
    iterations: int
    lr: float
    batch_size: int
    rate: float
    conv_rate: float
    output_rate: float
    rounds: int | None
    rewind: str
    min_keep: int
    pruning: str
    eval_every: int
    validation_size: int | None


def resolve(config: LTHOptions) -> Protocol:
    values = dict(PRESETS[config.preset])
    for key in ("data", "hidden", "iterations", "lr", "batch_size", "rate", "conv_rate", "output_rate", "rounds",
                "rewind"):
        if getattr(config, key) is not None:
            values[key] = getattr(config, key)
    values["hidden"] = parse_hidden(values["hidden"]) if values["hidden"] else None
    values["conv_rate"] = values["rate"] if values["conv_rate"] is None else values["conv_rate"]
    values["output_rate"] = values["rate"] / 2 if values["output_rate"] is None else values["output_rate"]
    if config.preset == "sum-of-two" and values["data"] != "sum-of-two":
        raise LLMPruneError("the sum-of-two preset makes its own data; leave out --data")
    protocol = Protocol(preset=config.preset, pruning=config.pruning, eval_every=config.eval_every,
                        validation_size=config.validation_size, **values)
    if protocol.eval_every > protocol.iterations:
        raise LLMPruneError(f"--eval-every {protocol.eval_every} is more than --iterations {protocol.iterations}")
    return protocol


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise LLMPruneError(f"--device {spec}: no CUDA device here (use cpu or auto)")
    return torch.device(spec)


class VisionDomain:
    """Training from scratch on in-memory tensors, scored by accuracy (or RMSE for regression)."""

    def __init__(self, data: Dataset, model_factory: Callable[[int], nn.Module], iterations: int, lr: float,
                 batch_size: int, eval_every: int = 100, device: str = "cpu", progress: bool = True):
        self.device = pick_device(device)
        self.data = data.to(self.device)
        self.model_factory = model_factory
        self.iterations, self.lr, self.batch_size, self.eval_every = iterations, lr, batch_size, eval_every
        self.progress = progress
        if batch_size > len(data.train):
            raise LLMPruneError(f"--batch-size {batch_size} is larger than the {len(data.train)} training examples")

    @property
    def regression(self) -> bool:
        return self.data.classes == 0

    def new_model(self, seed: int) -> nn.Module:
        return self.model_factory(seed).to(self.device)

    def prunable(self, model: nn.Module) -> dict:
        return prunable_weights(model)

    @torch.no_grad()
    def reinitialise(self, model: nn.Module, params: dict, seed: int) -> None:
        """Fresh Gaussian Glorot weights for every prunable layer (biases keep their rewind values)."""
        generator = torch.Generator().manual_seed(seed)
        for p in params.values():
            fresh = glorot_gaussian_(torch.empty(p.shape), generator)
            p.copy_(fresh)

    def reset_at_rewind(self, model: nn.Module) -> set[str]:
        return set()

    def total_steps(self) -> int:
        return self.iterations

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target) if self.regression else F.cross_entropy(output, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        scores = {}
        for split_name, split in (("validation", self.data.validation), ("test", self.data.test)):
            losses, correct = [], 0
            for start in range(0, len(split), 10_000):
                output = model(split.x[start:start + 10_000])
                target = split.y[start:start + 10_000]
                reduction = F.mse_loss if self.regression else F.cross_entropy
                losses.append(reduction(output, target, reduction="sum"))
                if not self.regression:
                    correct += int((output.argmax(1) == target).sum())
            mean_loss = float(torch.stack(losses).sum()) / len(split)
            scores[f"{split_name}_loss"] = mean_loss
            if self.regression:
                scores[f"{split_name}_rmse"] = mean_loss ** 0.5
            else:
                scores[f"{split_name}_accuracy"] = correct / len(split)
        model.train()
        return scores

    def train(self, model: nn.Module, masks: Masks | None, seed: int, on_step, desc: str) -> dict:
        params = prunable_weights(model)
        names = list(masks) if masks is not None else []
        weights = [params[n] for n in names]
        factors = [masks[n].to(device=self.device, dtype=weights[i].dtype) for i, n in enumerate(names)]
        # a fresh Adam every job: moments left from an earlier round would move pruned weights
        optimiser = torch.optim.Adam(model.parameters(), lr=self.lr)
        x, y = self.data.train.x, self.data.train.y
        model.train()
        # the loop hands over [jobs, batch] indices; this one job reads its row
        [curve] = self._train_loop(lambda batch: self.loss(model(x[batch[0]]), y[batch[0]]), optimiser,
                                   (weights, factors), [seed], desc, on_step, lambda: [self.evaluate(model)])
        return self._result(params, masks, curve)

    def stacks(self, model: nn.Module) -> bool:
        """Whether jobs of this network can train as one stacked model (``train_many``)."""
        return stackable(model)

    def train_many(self, models: list[nn.Module], masks: list[Masks | None], seeds: list[int], descs: list[str],
                   snapshot_step: int = 0) -> list[dict]:
        """Train K independent jobs as one stacked model; the same job as ``train`` for each.

        Job k starts from ``models[k]``'s weights, trains under ``masks[k]`` (None: dense) on the
        data order drawn from ``seeds[k]``, with its own Adam moments (one Adam over the [K, ...]
        tensors: every Adam operation is elementwise and all jobs take the same steps, so it is K
        Adams), and has its own curve and early stop. The trained weights are written back into
        ``models``. With ``snapshot_step`` each result holds ``"snapshot"``: the job's weights
        after that step (late rewinding).
        """
        jobs = len(models)
        net = StackedNet(models)
        fused = self.device.type in ("cpu", "cuda")
        optimiser = torch.optim.Adam(list(net.params.values()), lr=self.lr, fused=fused)
        x, y = self.data.train.x, self.data.train.y
        snapshots: list[dict | None] = [None] * jobs

        def after_step(step: int) -> None:
            if step == snapshot_step:
                snapshots[:] = [net.job_state(k) for k in range(jobs)]

        curves = self._train_loop(lambda batch: self.stacked_loss(net.forward(x[batch]), y[batch]), optimiser,
                                  self._stacked_mask_factors(net, models[0], masks), seeds,
                                  f"{descs[0]} and {jobs - 1} more" if jobs > 1 else descs[0], after_step,
                                  lambda: self.evaluate_many(net))
        net.write_back(models)
        results = [self._result(prunable_weights(model), job_masks, curve)
                   for model, job_masks, curve in zip(models, masks, curves)]
        if snapshot_step:
            for result, snapshot in zip(results, snapshots):
                result["snapshot"] = snapshot
        return results

    def _stacked_mask_factors(self, net: StackedNet, model: nn.Module,
                              masks: list[Masks | None]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The stacked weights under some job's mask, and one float factor per job and layer (ones for
        a dense job): multiplying by it puts every job's pruned weights back to zero."""
        shapes = {n: p.shape for n, p in prunable_weights(model).items()}
        masked = [n for n in shapes if any(m is not None for m in masks)]
        factors = [net.stack(n, [torch.ones(shapes[n]) if m is None else m[n].float() for m in masks])
                   .to(device=self.device, dtype=net.params[n].dtype) for n in masked]
        return [net.params[n] for n in masked], factors

    def _batches(self, seeds: list[int]):
        """Every step's batch indices of every job, [jobs, batch]: each job walks its own order, drawn
        from its seed, and draws a new one when the next batch would run past the epoch's end."""
        count = len(self.data.train)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        position = count  # draws the first order before the first batch
        while True:
            if position + self.batch_size > count:  # a new epoch in a new order, for every job alike
                orders = torch.stack([torch.randperm(count, generator=g) for g in generators]).to(self.device)
                position = 0
            yield orders[:, position:position + self.batch_size]
            position += self.batch_size

    def _train_loop(self, batch_loss: Callable[[torch.Tensor], torch.Tensor], optimiser: torch.optim.Optimizer,
                    masking: tuple[list[torch.Tensor], list[torch.Tensor]], seeds: list[int], desc: str,
                    after_step: Callable[[int], None] | None,
                    evaluate: Callable[[], list[dict[str, float]]]) -> list[dict[str, list]]:
        """The iterations of one job or of K stacked jobs (``batch_loss`` of the [jobs, batch] indices),
        with the masked weights multiplied back to exact zeros before the first step and after every
        step; returns each job's curve of the scores ``evaluate`` gives every ``eval_every`` steps."""
        weights, factors = masking

        def zero_pruned() -> None:
            if weights:
                with torch.no_grad():
                    torch._foreach_mul_(weights, factors)

        zero_pruned()
        curves: list[dict[str, list]] = [{"iteration": []} for _ in seeds]
        bar = tqdm(total=self.iterations, desc=desc, leave=False, disable=not self.progress, mininterval=1.0)
        for step, batch in zip(range(1, self.iterations + 1), self._batches(seeds)):
            loss = batch_loss(batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            zero_pruned()  # pruned weights back to exact zeros after every step
            if after_step is not None:
                after_step(step)
            if step % self.eval_every == 0 or step == self.iterations:
                for curve, scores in zip(curves, evaluate()):
                    curve["iteration"].append(step)
                    for key, value in scores.items():
                        curve.setdefault(key, []).append(value)
                bar.update(step - bar.n)
        bar.close()
        return curves

    def _result(self, params: dict, masks: Masks | None, curve: dict[str, list]) -> dict:
        """One job's result: its early stop, its curve, and the surviving weights of a tiny ticket."""
        result = {"steps": self.iterations, **summarise_curve(curve, self.regression), "curve": curve}
        if masks is not None and sum(int(m.sum()) for m in masks.values()) <= SHOW_WEIGHTS_UP_TO:
            result["surviving_weights"] = surviving_weights(params, masks)
        return result

    def stacked_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The sum over jobs of each job's mean loss: job k's gradient is that of its own loss."""
        jobs, batch = output.shape[:2]
        if self.regression:
            return F.mse_loss(output, target, reduction="sum") / (batch * output[0, 0].numel())
        return F.cross_entropy(output.reshape(jobs * batch, -1), target.reshape(-1), reduction="sum") / batch

    @torch.no_grad()
    def evaluate_many(self, net: StackedNet) -> list[dict[str, float]]:
        """``evaluate`` for every job of a stacked model, each split read once for all of them."""
        scores: list[dict[str, float]] = [{} for _ in range(net.jobs)]
        # chunks shrink with K so a stacked convolution's activations stay as small as one job's
        chunk = max(500, 10_000 // net.jobs)
        for split_name, split in (("validation", self.data.validation), ("test", self.data.test)):
            losses = torch.zeros(net.jobs, dtype=torch.float64, device=self.device)
            correct = torch.zeros(net.jobs, dtype=torch.long, device=self.device)
            for start in range(0, len(split), chunk):
                output = net.forward(split.x[start:start + chunk], shared=True)
                target = split.y[start:start + chunk]
                if self.regression:
                    per_job = F.mse_loss(output, target.expand(net.jobs, *target.shape), reduction="none")
                    losses += per_job.flatten(1).sum(1).double()
                else:
                    per_job = F.cross_entropy(output.reshape(-1, output.shape[-1]), target.repeat(net.jobs),
                                              reduction="none")
                    losses += per_job.view(net.jobs, -1).sum(1).double()
                    correct += (output.argmax(2) == target).sum(1)
            for job in range(net.jobs):
                mean_loss = float(losses[job]) / len(split)
                scores[job][f"{split_name}_loss"] = mean_loss
                if self.regression:
                    scores[job][f"{split_name}_rmse"] = mean_loss ** 0.5
                else:
                    scores[job][f"{split_name}_accuracy"] = int(correct[job]) / len(split)
        return scores


def surviving_weights(params: dict, masks: Masks) -> dict[str, list]:
    """Layer -> [[index..., trained value]] of every weight the mask keeps."""
    return {name: [[*map(int, index), float(params[name].detach()[tuple(index)])] for index in mask.nonzero().tolist()]
            for name, mask in masks.items()}


def summarise_curve(curve: dict[str, list], regression: bool) -> dict:
    """The early stop (lowest validation loss, the first on ties) and the test score there and at the end."""
    losses = curve["validation_loss"]
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    key = "test_rmse" if regression else "test_accuracy"
    return {"early_stop_iteration": curve["iteration"][best], key: curve[key][best],
            f"final_{key}": curve[key][-1], "early_stop_validation_loss": losses[best]}


def pruning_rule(protocol: Protocol, model: nn.Module):
    params = prunable_weights(model)
    names = list(params)
    if protocol.pruning == "global":
        total = sum(p.numel() for p in params.values())
        if protocol.rounds is None:
            raise LLMPruneError("global pruning needs --rounds")
        levels = [round(1 - (1 - protocol.rate) ** r, 12) for r in range(1, protocol.rounds + 1)]
        if any(round((1 - level) * total) < 1 for level in levels):
            raise LLMPruneError(f"{protocol.rounds} rounds at {protocol.rate:g} would remove every weight")
        return GlobalRule(levels, random_matches_layers=True)
    modules = dict(model.named_modules())
    rates = {}
    for name in names:
        layer = modules[name.removesuffix(".weight")]
        is_conv = isinstance(layer, (nn.Conv1d, nn.Conv2d))
        rates[name] = protocol.output_rate if name == names[-1] else protocol.conv_rate if is_conv else protocol.rate
    return LayerwiseRule({n: p.numel() for n, p in params.items()}, rates, protocol.rounds, protocol.min_keep)


def run_lth(config: LTHOptions, model_factory: Callable[[int], nn.Module] | None = None,
            data: Dataset | None = None) -> dict:
    """Run (or resume) the experiment, then write lth_report.json/.csv, the plots and the winning ticket.

    ``model_factory(seed)`` (any ``nn.Module`` classifier, initialised from the seed) and
    ``data`` replace the preset's network and ``--data`` from Python.
    """
    from .lth_report import build_report, save_ticket, write_report

    protocol = resolve(config)
    if data is None:
        data = load_data(protocol.data, config.seed, protocol.validation_size)
    if model_factory is None:
        if protocol.architecture in CONV_BLOCKS and len(data.input_shape) != 3:
            raise LLMPruneError(f"{config.preset} needs image data; {data.name} has inputs of shape {data.input_shape}")

        def model_factory(seed: int) -> nn.Module:
            return build_model(protocol.architecture, data.input_shape, max(data.classes, 1), protocol.hidden, seed)

    domain = VisionDomain(data, model_factory, protocol.iterations, protocol.lr, protocol.batch_size,
                          protocol.eval_every, config.device, config.progress)
    rule = pruning_rule(protocol, model_factory(config.seed))
    toy = config.preset == "sum-of-two"
    controls = SUM_OF_TWO_CONTROLS if toy else {c: c for c in config.controls}
    compared = {"protocol": asdict(protocol), "trials": config.trials, "seed": config.seed,
                "controls": list(controls), "data_name": data.name,
                "data_sizes": [len(data.train), len(data.validation), len(data.test)]}
    runner = IMPRunner(domain, rule, [config.seed + i for i in range(config.trials)],
                       RunDir(config.output, compared, {}, config.overwrite), controls,
                       ticket_kind="ticket", rewind_step=parse_rewind(protocol.rewind),
                       control_min_sparsity=rule.levels[-1] if toy else 0.0, progress=config.progress,
                       parallel_jobs=config.parallel_jobs)
    results = runner.run()
    report = build_report(results, rule, protocol, data, compared, regression=domain.regression)
    report["timing"]["this_invocation_seconds"] = round(runner.seconds, 1)
    ticket = save_ticket(runner, domain, report, Path(config.output) / "ticket")
    report["ticket"] = str(ticket) if ticket else None
    write_report(report, Path(config.output), results)
    return report
