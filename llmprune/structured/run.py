"""``shrink``: remove whole units (MLP channels, attention heads, blocks) so the model gets really
smaller and faster, and record what went in a report.

Blocks are shrunk one at a time on the inputs that the already shrunk earlier blocks produce, and each
shrunk block's outputs feed the next (the pruning engine's sequential scheme). Inside a block the
attention heads go first, then the MLP channels, so the MLP's statistics see the shrunk attention.
With one calibration chunk one forward pass per block does it all: a forward pre-hook on each consumer
(o_proj, down_proj) gathers its inputs' statistics, removes the units, re-fits the kept columns and
hands the narrowed input on. With several chunks each stage gets a statistics pass, then an output pass.
With ``refit_target="teacher"`` the re-fit aims at the dense model instead: each dense block first runs on
a copy of the dense model's own hidden states, and its consumers' inputs there are paired with the shrunk ones.
Block reconstruction (an engine ``BlockStep``, as in pruning) then trains each shrunk block.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from ..engine import BlockContext, BlockInputs, BlockStep, Lifecycle, capture_block_inputs, propagate, run_block
from ..errors import LLMPruneError
from ..anatomy import block_weights, find_blocks
from ..process import resolve_device
from .distill import distill
from .finalize import finalize_config
from .layouts import FamilyLayout
from .blocks import bridge_run, bridge_unavailable, removed_runs
from .options import ShrinkOptions, with_overrides
from .plan import ShrinkPlan, UnitCosts, plan_shrink
from .scores import InputStatistics
from .surgery import submodule
from .units import BLOCKS, UNITS, BlockRanking, WidthUnit, in_plan_order


class _Stage:
    """One kind of unit in one block: a hook on its consumer gathers statistics; ``apply`` removes units.

    ``teacher_inputs``: per calibration chunk, the consumer's inputs in the dense model (on the dense
    model's own hidden states), gathered against this model's inputs token for token (teacher re-fit).
    """

    def __init__(self, block: nn.Module, consumer: str, apply: Callable[[InputStatistics], list[int]],
                 teacher_inputs: list[torch.Tensor] | None = None):
        self.layer = submodule(block, consumer)
        self.apply = apply
        self.teacher_inputs = teacher_inputs
        self.stats: InputStatistics | None = None
        self.removed: list[int] = []

    def attach(self, shrink_on_sight: bool):
        calls = 0  # the chunk being run: one call of the consumer per chunk

        def hook(module, args):
            nonlocal calls
            inputs = args[0]
            if self.stats is None:
                self.stats = InputStatistics.empty(inputs.shape[-1], inputs.device, teacher=self.teacher_inputs is not None)
            self.stats.update(inputs, None if self.teacher_inputs is None else self.teacher_inputs[calls])
            calls += 1
            if shrink_on_sight:
                keep = torch.as_tensor(self.apply(self.stats), device=inputs.device)
                self.stats = None
                handle.remove()
                return (inputs.index_select(-1, keep), *args[1:])
            return None

        handle = self.layer.register_forward_pre_hook(hook)
        return handle

    def finish(self) -> None:
        if self.stats is None:
            raise LLMPruneError(f"{type(self.layer).__name__} was never called: the calibration inputs never reached it")
        self.apply(self.stats)
        self.stats = None


@torch.no_grad()
def run_dense_recording(block: nn.Module, inputs: list[BlockInputs], hidden: list[torch.Tensor],
                        consumers: list[str]) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]:
    """Run the (still dense) block on the dense stream ``hidden``; returns each consumer's inputs per
    chunk and the block's outputs (the dense stream's next hidden states)."""
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name in consumers}
    handles = []
    for name in consumers:
        def record(module, args, name=name):
            recorded[name].append(args[0].detach())
        handles.append(submodule(block, name).register_forward_pre_hook(record))
    try:
        outputs = run_block(block, [BlockInputs(h, item.args, item.kwargs) for h, item in zip(hidden, inputs)])
    finally:
        for handle in handles:
            handle.remove()
    return recorded, outputs


class _BlockLoop:
    """One sweep of the block loop (``shrink_blocks``): per kept block, the width units' stages, the block
    steps, then the outputs (through the bridge of the removed run after it) on to the next block."""

    def __init__(self, lifecycle: Lifecycle, layout: FamilyLayout, plan: ShrinkPlan, inputs: list[BlockInputs] | None,
                 removed_blocks: list[int], options: ShrinkOptions, steps: list[BlockStep]):
        self.blocks, self.device = lifecycle.blocks, lifecycle.device
        self.layout, self.plan, self.inputs, self.options, self.steps = layout, plan, inputs, options, steps
        self.removed_blocks = removed_blocks
        # attention before the MLP, so the MLP's statistics see the shrunk attention
        self.units = [UNITS[name] for name in in_plan_order(UNITS)
                      if isinstance(UNITS[name], WidthUnit) and UNITS[name].changes(layout, plan.shape, self.blocks[0])]
        refit_teacher = inputs and options.teacher_refit() and self.units
        self.teacher = [item.hidden.clone() for item in inputs] if refit_teacher else None
        self.records: dict[int, dict] = {}

    def visit(self, index: int, block: nn.Module) -> None:
        context = BlockContext(index, block, None, self.inputs or None)
        for step in self.steps:  # the block is still dense: steps record its outputs (reconstruction targets)
            step.before_prune(context)
        if index in self.removed_blocks:
            self.records[index] = {"block_removed": True}
            if self.teacher is not None:
                propagate_hidden(self.teacher, run_dense_recording(block, self.inputs, self.teacher, [])[1])
            return
        record: dict = {}
        self.records[index] = record
        outputs = self.shrink_units(block, record)
        if self.steps:
            context.weights = block_weights(block)
            changed = [step.after_prune(context) for step in self.steps]
            if any(changed):
                outputs = None
        self.pass_on(index, block, outputs, record)

    def shrink_units(self, block: nn.Module, record: dict) -> list[torch.Tensor] | None:
        """Remove every width unit's groups from ``block``; returns its outputs when the single pass gave them."""
        consumers = [unit.consumer(self.layout) for unit in self.units]
        dense_inputs: dict[str, list[torch.Tensor]] = {}
        if self.teacher is not None:
            dense_inputs, dense_outputs = run_dense_recording(block, self.inputs, self.teacher, consumers)
            propagate_hidden(self.teacher, dense_outputs)
        options = self.options
        stages = [_Stage(block, consumer, unit.shrinker(block, self.layout, self.plan.shape, options.score, options.compensate,
                                                        options.damp, record), dense_inputs.get(consumer))
                  for unit, consumer in zip(self.units, consumers)]
        return run_stages(block, stages, self.inputs)

    def pass_on(self, index: int, block: nn.Module, outputs: list[torch.Tensor] | None, record: dict) -> None:
        """The shrunk block's outputs become the next block's inputs (bridged over a removed run after it)."""
        if not self.inputs:
            return
        run = following_run(index, self.removed_blocks) if self.options.block_correction else []
        if run:  # the removed run after this block gets its bridge, folded into this block
            outputs, record["bridge"] = bridge_run(block, self.layout, self.inputs, [self.blocks[i] for i in run],
                                                   self.device, self.options.damp)
        elif outputs is None:
            outputs = run_block(block, self.inputs)
        propagate(self.inputs, outputs)


def run_stages(block: nn.Module, stages: list[_Stage], inputs: list[BlockInputs] | None) -> list[torch.Tensor] | None:
    """Gather each stage's statistics and remove its units: one pass for one calibration chunk (returning the
    block's outputs), a statistics pass per stage for several; the weights alone without inputs."""
    if not inputs:  # magnitude without compensation: the weights alone decide, nothing to propagate
        for stage in stages:
            stage.apply(None)
        return None
    if len(inputs) == 1 and stages:  # statistics, removal and outputs in one pass
        handles = [stage.attach(shrink_on_sight=True) for stage in stages]
        try:
            return run_block(block, inputs)
        finally:
            for handle in handles:
                handle.remove()
    for stage in stages:
        handle = stage.attach(shrink_on_sight=False)
        try:
            run_block(block, inputs)
        finally:
            handle.remove()
        stage.finish()
    return None


@torch.no_grad()
def shrink_blocks(lifecycle: Lifecycle, layout: FamilyLayout, plan: ShrinkPlan, inputs: list[BlockInputs] | None,
                  removed_blocks: list[int], options: ShrinkOptions, steps: list[BlockStep] = ()) -> dict[int, dict]:
    """The block loop: shrink every surviving block in place on its (already shrunk) inputs; returns the
    removed units per block. Removed blocks are skipped, so their inputs flow on to the next block. It runs
    on the engine's block lifecycle (``Lifecycle.sweep``), the loop every pruning run uses; ``steps``
    (block reconstruction) see each block before (dense) and after it is shrunk, as in pruning.

    With the teacher re-fit, a copy of the dense model's hidden states flows beside the shrunk ones: each
    dense block is run on it first, recording its consumers' inputs, which the shrunk block's statistics
    pair token for token with its own."""
    loop = _BlockLoop(lifecycle, layout, plan, inputs, removed_blocks, options, list(steps))
    lifecycle.sweep(f"shrink {','.join(plan.units)}", loop.visit, write=True)
    return loop.records


def following_run(index: int, removed: list[int]) -> list[int]:
    """The contiguous removed blocks right after block ``index``."""
    run = []
    while index + 1 + len(run) in removed:
        run.append(index + 1 + len(run))
    return run


def bridge_report(records: dict[int, dict], removed_blocks: list[int], bridged: bool, note: str | None) -> dict | list | None:
    """Per removed run, its blocks and its bridge's errors (from the record of the kept block before it);
    ``{"skipped": why}`` when the family cannot take a bridge; None when no bridge was asked or no block went."""
    if note:
        return {"skipped": note}
    if not bridged or not removed_blocks:
        return None
    entries = []
    for first, last in removed_runs(removed_blocks):
        blocks = {"blocks": list(range(first, last + 1))}
        entries.append(records[first - 1]["bridge"] | blocks if first > 0 else blocks | {"skipped": "no kept block before it"})
    return entries


def propagate_hidden(hidden: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
    """A stream of bare hidden states (the dense teacher's) moves on to the block's outputs."""
    hidden[:] = outputs


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # tied parameters count once


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@dataclass
class _Calibration:
    """The calibration windows a shrink reads (none when the weights alone decide)."""

    chunks: list[torch.Tensor] | None
    nsamples: int
    seqlen: int
    source: str | None

    def report(self, seed: int) -> dict:
        needed = self.chunks is not None
        return {"source": self.source if needed else None, "nsamples": self.nsamples if needed else 0,
                "seqlen": self.seqlen if needed else 0, "seed": seed, "chunks": len(self.chunks) if self.chunks else 0}


def _calibration(model: nn.Module, tokenizer, options: ShrinkOptions, plan: ShrinkPlan, steps: list[BlockStep],
                 calibration_ids: torch.Tensor | None, calibration_text=None) -> _Calibration:
    from ..calibration import calibration_chunks

    needs_data = (options.score != "magnitude" or options.compensate or plan.blocks_removed > 0 or bool(steps)
                  or options.distill_steps > 0)
    if not needs_data:
        return _Calibration(None, options.nsamples, options.seqlen, None)
    chunks, nsamples, seqlen = calibration_chunks(model, tokenizer, calibration_text or options.calibration, options.nsamples,
                                                  options.seqlen, options.seed, options.batch_size, calibration_ids)
    return _Calibration(chunks, nsamples, seqlen, "given token ids" if calibration_ids is not None else options.calibration)


def _with_bridge_or_note(model: nn.Module, layout: FamilyLayout, plan: ShrinkPlan,
                         options: ShrinkOptions) -> tuple[ShrinkOptions, str | None]:
    """The default asks for the removed runs' bridge; a family that cannot take it gets none, and a note."""
    note = bridge_unavailable(layout) if options.block_correction and plan.blocks_removed else None
    if note:
        print(f"llmprune: note: removed blocks get no linear bridge in model type '{model.config.model_type}': {note}", flush=True)
        options = replace(options, block_correction=False)
    return options, note


@dataclass
class _Shrunk:
    """What a shrink did, for its report."""

    layout: FamilyLayout
    costs: UnitCosts
    plan: ShrinkPlan
    options: ShrinkOptions
    calibration: _Calibration
    ranking: BlockRanking
    records: dict[int, dict]
    bridge_note: str | None
    config_changes: dict
    distilled: dict | None


def _finalize(model: nn.Module, dense: nn.Module | None, layout: FamilyLayout, plan: ShrinkPlan, removed: list[int],
              chunks: list[torch.Tensor] | None, options: ShrinkOptions, device) -> tuple[dict, dict | None]:
    """Drop the removed blocks, write the config, and (with ``dense``) distil the shrunk model towards the dense one;
    returns the config changes and the distillation's report."""
    BLOCKS.remove(model, layout, removed)
    config_changes = finalize_config(model, layout, plan.intermediate, plan.heads, plan.kv_heads, removed)
    if dense is None:
        return config_changes, None
    distilled = distill(model, dense, torch.cat(list(chunks)), int(options.distill_steps), float(options.distill_lr),
                        int(options.distill_batch_size), device, options.seed, options.progress)
    return config_changes, distilled


def _report(model: nn.Module, shrunk: _Shrunk, before: dict, started: float, steps: list[BlockStep]) -> dict:
    from ..process import peak_gpu_mb, peak_rss_mb, versions

    plan, options, ranking, records = shrunk.plan, shrunk.options, shrunk.ranking, shrunk.records
    _, blocks = find_blocks(model)
    report = {
        "model": getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "method": "shrink",
        "ratio": options.ratio,
        "ratio_reached": round(plan.reached, 5),
        "ratio_step": round(plan.step, 5),
        "units": list(plan.units),
        "notes": plan.notes,
        "score": options.score,
        "block_score": options.block_score if plan.blocks_removed else None,
        "compensate": options.compensate,
        "refit_target": options.refit_target if options.compensate else None,
        "damp": options.damp,
        "multiple_of": options.multiple_of,
        "kept": {"intermediate_size": plan.intermediate if shrunk.layout.mlp_consumer else None, "num_attention_heads": plan.heads,
                 "num_key_value_heads": plan.kv_heads, "num_hidden_layers": shrunk.costs.blocks - len(ranking.removed)},
        "config_changes": shrunk.config_changes,
        "parameters": {"before": before["parameters"], "after": parameter_count(model),
                       "blocks_before": before["block_parameters"], "blocks_after": parameter_count(blocks)},
        "weight_bytes": {"before": before["bytes"], "after": parameter_bytes(model)},
        "removed_blocks": ranking.removed,
        "block_influence": [round(value, 5) for value in ranking.influence] if ranking.influence else None,
        "block_skip_loss": [round(value, 5) for value in ranking.losses] if ranking.losses else None,
        "block_correction": bridge_report(records, ranking.removed, options.block_correction, shrunk.bridge_note),
        "blocks": {str(index): record for index, record in records.items() if record},
        "calibration": shrunk.calibration.report(options.seed),
        "shrink_seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": peak_gpu_mb(),
        "versions": versions(),
    }
    if shrunk.distilled is not None:
        report["distill"] = shrunk.distilled
    for step in steps:
        entry = step.finalize(model)
        if entry is not None:
            report[step.name] = entry
    return report


def _sizes(model: nn.Module) -> dict:
    _, blocks = find_blocks(model)
    return {"parameters": parameter_count(model), "bytes": parameter_bytes(model), "block_parameters": parameter_count(blocks)}


def shrink(model: nn.Module, tokenizer=None, options: ShrinkOptions | None = None, *,
           calibration_ids: torch.Tensor | None = None, calibration_text=None, **overrides) -> dict:
    """Remove a fraction ``ratio`` of the decoder blocks' parameters as whole units, in place; returns the report.

    ``options`` (a ``ShrinkOptions``, or its fields as keyword ``overrides``: ``ratio``, ``units``, ``score``,
    ...; every default lives there). ``units``: ``auto`` (see ``ShrinkOptions.units``) or a mix of ``mlp``
    (intermediate channels), ``heads`` (query heads, the same number per key/value group, or whole key/value
    groups) and ``blocks``. ``score`` ranks channels and heads (magnitude, wanda,
    fluctuation, hessian, obs); ``block_score`` ranks blocks (angular: ShortGPT's block influence; span:
    the most similar contiguous run; loss: the calibration loss with the block skipped);
    ``block_correction`` folds a least-squares linear bridge for each removed run into the kept block
    before it. ``compensate`` re-fits the consumer's kept columns by least squares,
    towards the layer's own outputs (``refit_target="local"``) or the dense model's (``teacher``);
    ``reconstruct`` then trains each shrunk block to reproduce the dense block's outputs, and
    ``distill_steps`` the whole shrunk model towards the dense model's next-token distributions. Widths are
    uniform across blocks and rounded to ``multiple_of``; the plan is validated by transformers (the config
    class and a meta-device model of the shrunk config) before any block is touched, and the config is
    edited so the saved folder loads with stock transformers. ``calibration_ids`` (nsamples x seqlen token
    ids) replace the calibration text; ``calibration_text`` (a ``calibration.CalibrationText``) is that text
    already read (the job shell reads it once, before the model loads).
    """
    options = with_overrides(options, **overrides)
    options.validate()
    device, started = resolve_device(options.device), time.perf_counter()
    # Plan, then validate (transformers' config class and a meta-device model), then work.
    layout, costs, plan = plan_shrink(model, options.ratio, options.units, int(options.multiple_of))
    for note in plan.notes:
        print(f"llmprune: {note}", flush=True)
    before = _sizes(model)
    reconstruction = options.reconstruction()
    steps = [reconstruction] if reconstruction else []
    calibration = _calibration(model, tokenizer, options, plan, steps, calibration_ids, calibration_text)
    was_training = model.training
    model.eval()
    dense = copy.deepcopy(model) if options.distill_steps else None  # the distillation's teacher
    inputs = capture_block_inputs(model, calibration.chunks, device) if calibration.chunks is not None else None
    options, bridge_note = _with_bridge_or_note(model, layout, plan, options)
    ranking = BLOCKS.rank(model, plan.blocks_removed, options.block_score, calibration.chunks, inputs, device, options.progress)
    records = shrink_blocks(Lifecycle(model, device=device, progress=options.progress), layout, plan,
                            [] if inputs is None else inputs, ranking.removed, options, steps)
    del inputs
    config_changes, distilled = _finalize(model, dense, layout, plan, ranking.removed, calibration.chunks, options, device)
    del dense
    model.train(was_training)
    shrunk = _Shrunk(layout, costs, plan, options, calibration, ranking, records, bridge_note, config_changes, distilled)
    return _report(model, shrunk, before, started, steps)
