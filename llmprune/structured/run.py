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
from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from ..engine import BlockContext, BlockInputs, BlockStep, Lifecycle, capture_block_inputs, propagate, run_block
from ..errors import LLMPruneError
from ..anatomy import block_weights, find_blocks, weight_matrix
from ..process import resolve_device
from .distill import distill
from .finalize import finalize_config
from .layouts import FamilyLayout, query_rows
from .blocks import block_removal_scores, block_skip_losses, bridge_run, bridge_unavailable, choose_blocks, removed_runs
from .options import ShrinkOptions, with_overrides
from .plan import ShrinkPlan, plan_shrink
from .scores import InputStatistics, choose_units
from .surgery import remove_blocks, remove_heads, remove_mlp_channels, submodule


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


def _mlp_apply(block, layout: FamilyLayout, plan: ShrinkPlan, score: str, compensate: bool, damp: float, record: dict):
    def apply(stats: InputStatistics) -> list[int]:
        consumer = submodule(block, layout.mlp_consumer)
        weight = weight_matrix(consumer).float()
        width = weight.shape[1]
        producer_sq = torch.zeros(width, device=weight.device)
        for name, pieces in layout.mlp_producers:
            producer_sq += weight_matrix(submodule(block, name)).float().pow(2).sum(1).reshape(pieces, width).sum(0)
        removed = choose_units(score, weight, stats, [[j] for j in range(width)], width - plan.intermediate,
                               producer_sq=producer_sq, damp=damp)
        gone = set(removed)
        keep = [j for j in range(width) if j not in gone]
        remove_mlp_channels(block, layout, keep, stats if compensate else None, damp)
        record["mlp_channels_removed"] = removed
        return keep

    return apply


def _heads_apply(block, layout: FamilyLayout, plan: ShrinkPlan, score: str, compensate: bool, damp: float, record: dict):
    attention = layout.attention
    heads, kv_heads, head_dim = attention.sizes
    per_group = heads // kv_heads

    def columns(head: int) -> list[int]:
        return list(range(head * head_dim, (head + 1) * head_dim))

    def apply(stats: InputStatistics) -> list[int]:
        weight = weight_matrix(submodule(block, attention.output)).float()
        q_layer = submodule(block, attention.qkv or attention.q)
        rows = query_rows(attention.qkv_order, heads, kv_heads, head_dim) if attention.qkv else list(range(heads * head_dim))
        producer_sq = weight_matrix(q_layer).float()[rows].pow(2).sum(1)
        if plan.kv_heads < kv_heads:  # whole key/value groups with their query heads
            groups = [[c for h in range(g * per_group, (g + 1) * per_group) for c in columns(h)] for g in range(kv_heads)]
            removed_groups = choose_units(score, weight, stats, groups, kv_heads - plan.kv_heads, producer_sq=producer_sq, damp=damp)
            kept_kv = [g for g in range(kv_heads) if g not in removed_groups]
            kept_q = [h for h in range(heads) if h // per_group in kept_kv]
        else:  # the same number of query heads from every group
            clusters = [h // per_group for h in range(heads)]
            removed_heads = choose_units(score, weight, stats, [columns(h) for h in range(heads)], heads - plan.heads,
                                         clusters=clusters, producer_sq=producer_sq, damp=damp)
            kept_kv = list(range(kv_heads))
            kept_q = [h for h in range(heads) if h not in removed_heads]
        remove_heads(block, layout, kept_q, kept_kv, stats if compensate else None, damp)
        record["query_heads_removed"] = [h for h in range(heads) if h not in kept_q]
        record["kv_heads_removed"] = [g for g in range(kv_heads) if g not in kept_kv]
        return [c for h in kept_q for c in columns(h)]

    return apply


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
    model, blocks = lifecycle.model, lifecycle.blocks
    attention = layout.attention
    change_heads = attention is not None and (plan.heads, plan.kv_heads) != (attention.heads, attention.kv_heads)
    change_mlp = layout.mlp_consumer is not None and plan.intermediate != unit_costs_intermediate(blocks[0], layout)
    score, compensate, damp = options.score, options.compensate, options.damp
    teacher = [item.hidden.clone() for item in inputs] if inputs and options.teacher_refit() and (change_heads or change_mlp) else None
    records: dict[int, dict] = {}

    def visit(index: int, block: nn.Module) -> None:
        context = BlockContext(index, block, None, inputs or None)
        for step in steps:  # the block is still dense: steps record its outputs (reconstruction targets)
            step.before_prune(context)
        if index in removed_blocks:
            records[index] = {"block_removed": True}
            if teacher is not None:
                propagate_hidden(teacher, run_dense_recording(block, inputs, teacher, [])[1])
            return
        record: dict = {}
        records[index] = record
        consumers = ([layout.attention.output] if change_heads else []) + ([layout.mlp_consumer] if change_mlp else [])
        dense_inputs: dict[str, list[torch.Tensor]] = {}
        if teacher is not None:
            dense_inputs, dense_outputs = run_dense_recording(block, inputs, teacher, consumers)
            propagate_hidden(teacher, dense_outputs)
            del dense_outputs
        stages = []
        if change_heads:
            stages.append(_Stage(block, layout.attention.output, _heads_apply(block, layout, plan, score, compensate, damp, record),
                                 dense_inputs.get(layout.attention.output)))
        if change_mlp:
            stages.append(_Stage(block, layout.mlp_consumer, _mlp_apply(block, layout, plan, score, compensate, damp, record),
                                 dense_inputs.get(layout.mlp_consumer)))
        outputs = None
        if not inputs:  # magnitude without compensation: the weights alone decide, nothing to propagate
            for stage in stages:
                stage.apply(None)
        elif len(inputs) == 1 and stages:  # statistics, removal and outputs in one pass
            handles = [stage.attach(shrink_on_sight=True) for stage in stages]
            try:
                outputs = run_block(block, inputs)
            finally:
                for handle in handles:
                    handle.remove()
        else:
            for stage in stages:
                handle = stage.attach(shrink_on_sight=False)
                try:
                    run_block(block, inputs)
                finally:
                    handle.remove()
                stage.finish()
        del dense_inputs, stages
        if steps:
            context.weights = block_weights(block)
            changed = [step.after_prune(context) for step in steps]
            if any(changed):
                outputs = None
        run = following_run(index, removed_blocks) if options.block_correction else []
        if inputs and run:  # the removed run after this block gets its bridge, folded into this block
            outputs, record["bridge"] = bridge_run(block, layout, inputs, [blocks[i] for i in run], lifecycle.device, damp)
        elif inputs and outputs is None:
            outputs = run_block(block, inputs)
        if inputs:
            propagate(inputs, outputs)

    lifecycle.sweep(f"shrink {','.join(plan.units)}", visit, write=True)
    return records


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


def unit_costs_intermediate(block: nn.Module, layout: FamilyLayout) -> int:
    return weight_matrix(submodule(block, layout.mlp_consumer)).shape[1]


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # tied parameters count once


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


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
    from ..calibration import calibration_chunks
    from ..process import peak_rss_mb, versions

    options = with_overrides(options, **overrides)
    options.validate()
    progress, device = options.progress, resolve_device(options.device)
    started = time.perf_counter()
    # Plan, then validate (transformers' config class and a meta-device model), then work.
    layout, costs, plan = plan_shrink(model, options.ratio, options.units, int(options.multiple_of))
    for note in plan.notes:
        print(f"llmprune: {note}", flush=True)
    params_before, bytes_before = parameter_count(model), parameter_bytes(model)
    _, blocks = find_blocks(model)
    block_params_before = parameter_count(blocks)
    reconstruction = options.reconstruction()
    steps = [reconstruction] if reconstruction else []
    needs_data = options.score != "magnitude" or options.compensate or plan.blocks_removed > 0 or bool(steps) or options.distill_steps > 0
    source = "given token ids" if calibration_ids is not None else options.calibration
    chunks, nsamples, seqlen = None, options.nsamples, options.seqlen
    if needs_data:
        chunks, nsamples, seqlen = calibration_chunks(model, tokenizer, calibration_text or options.calibration, options.nsamples, options.seqlen,
                                                      options.seed, options.batch_size, calibration_ids)
    was_training = model.training
    model.eval()
    dense = copy.deepcopy(model) if options.distill_steps else None  # the distillation's teacher
    inputs = capture_block_inputs(model, chunks, device) if needs_data else None
    bridge_note = bridge_unavailable(layout) if options.block_correction and plan.blocks_removed else None
    if bridge_note:  # the default asks for the bridge; this family cannot take it
        print(f"llmprune: note: removed blocks get no linear bridge in model type '{model.config.model_type}': {bridge_note}", flush=True)
        options = replace(options, block_correction=False)
    removed_blocks, influence, losses = [], None, None
    if plan.blocks_removed and options.block_score == "loss":
        losses = block_skip_losses(model, find_blocks(model)[1], chunks, progress)
        removed_blocks = choose_blocks("loss", plan.blocks_removed, losses=losses)
    elif plan.blocks_removed:
        influence, boundaries = block_removal_scores(Lifecycle(model, device=device, progress=progress), inputs,
                                                     boundaries_too=options.block_score == "span")
        removed_blocks = choose_blocks(options.block_score, plan.blocks_removed, influence, boundaries)
        del boundaries
    if inputs is None:  # magnitude without compensation: weights alone decide
        inputs = []
    records = shrink_blocks(Lifecycle(model, device=device, progress=progress), layout, plan, inputs, removed_blocks,
                            options, steps)
    del inputs
    remove_blocks(model, layout, removed_blocks)
    config_changes = finalize_config(model, layout, plan.intermediate, plan.heads, plan.kv_heads, removed_blocks)
    distilled = None
    if dense is not None:
        distilled = distill(model, dense, torch.cat(list(chunks)), int(options.distill_steps), float(options.distill_lr),
                            int(options.distill_batch_size), device, options.seed, progress)
        del dense
    model.train(was_training)
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
        "kept": {"intermediate_size": plan.intermediate if layout.mlp_consumer else None, "num_attention_heads": plan.heads,
                 "num_key_value_heads": plan.kv_heads, "num_hidden_layers": costs.blocks - len(removed_blocks)},
        "config_changes": config_changes,
        "parameters": {"before": params_before, "after": parameter_count(model),
                       "blocks_before": block_params_before, "blocks_after": parameter_count(blocks)},
        "weight_bytes": {"before": bytes_before, "after": parameter_bytes(model)},
        "removed_blocks": removed_blocks,
        "block_influence": [round(value, 5) for value in influence] if influence else None,
        "block_skip_loss": [round(value, 5) for value in losses] if losses else None,
        "block_correction": bridge_report(records, removed_blocks, options.block_correction, bridge_note),
        "blocks": {str(index): record for index, record in records.items() if record},
        "calibration": {"source": source if needs_data else None, "nsamples": nsamples if needs_data else 0,
                        "seqlen": seqlen if needs_data else 0, "seed": options.seed, "chunks": len(chunks) if chunks else 0},
        "shrink_seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": versions(),
    }
    if distilled is not None:
        report["distill"] = distilled
    for step in steps:
        entry = step.finalize(model)
        if entry is not None:
            report[step.name] = entry
    return report
