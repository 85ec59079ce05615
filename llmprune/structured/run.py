"""``shrink``: remove whole units (MLP channels, attention heads, blocks) so the model gets really
smaller and faster, and record what went in a report.

Blocks are shrunk one at a time on the inputs that the already shrunk earlier blocks produce, and each
shrunk block's outputs feed the next (the pruning engine's sequential scheme). Inside a block the
attention heads go first, then the MLP channels, so the MLP's statistics see the shrunk attention.
With one calibration chunk one forward pass per block does it all: a forward pre-hook on each consumer
(o_proj, down_proj) gathers its inputs' statistics, removes the units, re-fits the kept columns and
hands the narrowed input on. With several chunks each stage gets a statistics pass, then an output pass.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from ..engine import BlockInputs, Lifecycle, capture_block_inputs, copy_inputs, propagate, run_block
from ..errors import LLMPruneError
from ..anatomy import find_blocks, weight_matrix
from ..process import resolve_device
from .finalize import finalize_config
from .layouts import FamilyLayout, attention_sizes, layout_for
from .plan import UNITS, ShrinkPlan, make_plan, unit_costs
from .scores import SCORES, InputStatistics, choose_units
from .surgery import remove_blocks, remove_heads, remove_mlp_channels, submodule

BLOCK_SCORES = ("angular", "span")
# "auto": MLP channels and heads where the family's heads are removable (the best mix measured on the
# bundled model, eval/results/shrink.md), MLP channels alone elsewhere.
DEFAULT_UNITS = "auto"
DEFAULT_SCORE = "hessian"  # measured best per second of shrinking: eval/results/shrink.md
DEFAULT_MULTIPLE_OF = 64
# Least-squares damping as a fraction of the Hessian mean diagonal: 1e-4 gave 29.1 against 30.8 for 1e-2
# on the bundled model (mlp, hessian, R = 0.25, 16 x 512 calibration, 16 test windows).
DEFAULT_DAMP = 1e-4


class _Stage:
    """One kind of unit in one block: a hook on its consumer gathers statistics; ``apply`` removes units."""

    def __init__(self, block: nn.Module, consumer: str, apply: Callable[[InputStatistics], list[int]]):
        self.layer = submodule(block, consumer)
        self.apply = apply
        self.stats: InputStatistics | None = None
        self.removed: list[int] = []

    def attach(self, shrink_on_sight: bool):
        def hook(module, args):
            inputs = args[0]
            if self.stats is None:
                self.stats = InputStatistics.empty(inputs.shape[-1], inputs.device)
            self.stats.update(inputs)
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


def _heads_apply(block, layout: FamilyLayout, sizes, plan: ShrinkPlan, score: str, compensate: bool, damp: float, record: dict):
    heads, kv_heads, head_dim = sizes
    per_group = heads // kv_heads

    def columns(head: int) -> list[int]:
        return list(range(head * head_dim, (head + 1) * head_dim))

    def apply(stats: InputStatistics) -> list[int]:
        weight = weight_matrix(submodule(block, layout.attention.output)).float()
        q_layer = submodule(block, layout.attention.qkv or layout.attention.q)
        producer_sq = weight_matrix(q_layer).float()[: heads * head_dim].pow(2).sum(1)
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
        remove_heads(block, layout, sizes, kept_q, kept_kv, stats if compensate else None, damp)
        record["query_heads_removed"] = [h for h in range(heads) if h not in kept_q]
        record["kv_heads_removed"] = [g for g in range(kv_heads) if g not in kept_kv]
        return [c for h in kept_q for c in columns(h)]

    return apply


@torch.no_grad()
def block_removal_scores(lifecycle: Lifecycle, inputs: list[BlockInputs], sample_rows: int = 8192) -> tuple[list[float], list[torch.Tensor]]:
    """Per block, ShortGPT's block influence 1 - mean cos(x_in, x_out) over every token, and a sample of
    token rows of the hidden states at every block boundary (for Gromov's spans). One dense forward."""
    inputs = copy_inputs(inputs)
    influence, boundaries = [], []

    def sample(hidden: list[torch.Tensor]) -> torch.Tensor:
        rows = torch.cat([h.reshape(-1, h.shape[-1]) for h in hidden])
        stride = max(1, rows.shape[0] // sample_rows)
        return rows[::stride].float().cpu()

    boundaries.append(sample([item.hidden for item in inputs]))

    def visit(index: int, block: nn.Module) -> None:
        outputs = run_block(block, inputs)
        cosines = [nn.functional.cosine_similarity(item.hidden.float(), out.float(), dim=-1) for item, out in zip(inputs, outputs)]
        influence.append(float(1 - torch.cat([c.reshape(-1) for c in cosines]).mean()))
        propagate(inputs, outputs)
        boundaries.append(sample(outputs))

    lifecycle.sweep("block influence", visit, write=False)
    return influence, boundaries


def choose_blocks(kind: str, influence: list[float], boundaries: list[torch.Tensor], count: int) -> list[int]:
    """``angular``: the ``count`` blocks of lowest influence; ``span``: the contiguous run of ``count``
    blocks whose input and output are closest in angle (Gromov et al.)."""
    if count == 0:
        return []
    if kind == "angular":
        return sorted(sorted(range(len(influence)), key=lambda i: influence[i])[:count])
    if kind == "span":
        def distance(start: int) -> float:
            cos = nn.functional.cosine_similarity(boundaries[start], boundaries[start + count], dim=-1).clamp(-1, 1)
            return float(torch.arccos(cos).mean() / torch.pi)

        start = min(range(len(influence) - count + 1), key=distance)
        return list(range(start, start + count))
    raise LLMPruneError(f"unknown block score '{kind}' (use {', '.join(BLOCK_SCORES)})")


@torch.no_grad()
def shrink_blocks(lifecycle: Lifecycle, layout: FamilyLayout, plan: ShrinkPlan, inputs: list[BlockInputs] | None,
                  removed_blocks: list[int], score: str, compensate: bool, damp: float) -> dict[int, dict]:
    """The block loop: shrink every surviving block in place on its (already shrunk) inputs; returns the
    removed units per block. Removed blocks are skipped, so their inputs flow on to the next block. It runs
    on the engine's block lifecycle (``Lifecycle.sweep``), the loop every pruning run uses."""
    model, blocks = lifecycle.model, lifecycle.blocks
    sizes = attention_sizes(model.config)
    change_heads = "heads" in plan.units and (plan.heads, plan.kv_heads) != sizes[:2]
    change_mlp = "mlp" in plan.units and plan.intermediate != unit_costs_intermediate(blocks[0], layout)
    records: dict[int, dict] = {}

    def visit(index: int, block: nn.Module) -> None:
        if index in removed_blocks:
            records[index] = {"block_removed": True}
            return
        record: dict = {}
        records[index] = record
        stages = []
        if change_heads:
            stages.append(_Stage(block, layout.attention.output, _heads_apply(block, layout, sizes, plan, score, compensate, damp, record)))
        if change_mlp:
            stages.append(_Stage(block, layout.mlp_consumer, _mlp_apply(block, layout, plan, score, compensate, damp, record)))
        if not stages:
            return
        if not inputs:  # magnitude without compensation: the weights alone decide, nothing to propagate
            for stage in stages:
                stage.apply(None)
            return
        if len(inputs) == 1:  # statistics, removal and outputs in one pass
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
            outputs = run_block(block, inputs)
        propagate(inputs, outputs)

    lifecycle.sweep(f"shrink {','.join(plan.units)}", visit, write=True)
    return records


def unit_costs_intermediate(block: nn.Module, layout: FamilyLayout) -> int:
    return weight_matrix(submodule(block, layout.mlp_consumer)).shape[1]


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # tied parameters count once


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def heads_removable(model: nn.Module) -> bool:
    layout, known = layout_for(model)
    return known and layout.attention.head_dim_explicit


def _parse_units(units, model: nn.Module | None = None) -> tuple[str, ...]:
    if units == "auto":
        return ("mlp", "heads") if model is None or heads_removable(model) else ("mlp",)
    if isinstance(units, str):
        units = [part.strip() for part in units.split(",") if part.strip()]
    units = tuple(units)
    for unit in units:
        if unit not in UNITS:
            raise LLMPruneError(f"unknown unit '{unit}' (use a comma-separated mix of {', '.join(UNITS)})")
    if not units:
        raise LLMPruneError(f"no units given (use a comma-separated mix of {', '.join(UNITS)})")
    return units


def check_shrink_options(model: nn.Module | None, ratio: float, units, score: str, block_score: str, reconstruct: bool) -> tuple[str, ...]:
    """Every option error before any work; returns the parsed units."""
    if reconstruct:
        raise LLMPruneError("--reconstruct (block reconstruction after shrinking) is not available yet")
    if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise LLMPruneError(f"ratio must be in (0, 1), got {ratio}")
    units = _parse_units(units, model)
    if score not in SCORES:
        raise LLMPruneError(f"unknown score '{score}' (use {', '.join(SCORES)})")
    if block_score not in BLOCK_SCORES:
        raise LLMPruneError(f"unknown block score '{block_score}' (use {', '.join(BLOCK_SCORES)})")
    if model is not None and "heads" in units:
        if not heads_removable(model):
            raise LLMPruneError(
                f"heads cannot be removed from model type '{model.config.model_type}': its attention layout "
                "is unknown or ties the head size to hidden_size // heads (use --units mlp,blocks)"
            )
    return units


def shrink(
    model: nn.Module,
    tokenizer=None,
    ratio: float = 0.25,
    units: str | tuple[str, ...] = DEFAULT_UNITS,
    score: str = DEFAULT_SCORE,
    block_score: str = "angular",
    multiple_of: int = DEFAULT_MULTIPLE_OF,
    compensate: bool = True,
    damp: float = DEFAULT_DAMP,
    calibration: str = "wikipedia",
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    device: str = "auto",
    batch_size: int | None = None,
    calibration_ids: torch.Tensor | None = None,
    reconstruct: bool = False,
    progress: bool = True,
) -> dict:
    """Remove a fraction ``ratio`` of the decoder blocks' parameters as whole units, in place; returns the report.

    ``units``: ``auto`` (mlp and heads where heads are removable, else mlp) or a mix of ``mlp`` (intermediate channels), ``heads`` (query heads, the same number per
    key/value group, or whole key/value groups) and ``blocks``. ``score`` ranks channels and heads
    (magnitude, wanda, fluctuation, hessian, obs); ``block_score`` ranks blocks (angular: ShortGPT's
    block influence; span: the most similar contiguous run). ``compensate`` re-fits the consumer's kept
    columns by least squares on its calibration Hessian. Widths are uniform across blocks and rounded to
    ``multiple_of``; the config is edited so the saved folder loads with stock transformers.
    """
    from ..calibration import calibration_chunks
    from ..process import peak_rss_mb, versions

    units = check_shrink_options(model, ratio, units, score, block_score, reconstruct)
    layout, _ = layout_for(model)
    started = time.perf_counter()
    costs = unit_costs(model, layout)
    plan = make_plan(costs, ratio, units, multiple_of)
    device = resolve_device(device)
    params_before, bytes_before = parameter_count(model), parameter_bytes(model)
    _, blocks = find_blocks(model)
    block_params_before = parameter_count(blocks)
    needs_data = score != "magnitude" or compensate or plan.blocks_removed > 0
    source = "given token ids" if calibration_ids is not None else calibration
    chunks = None
    if needs_data:
        chunks, nsamples, seqlen = calibration_chunks(model, tokenizer, calibration, nsamples, seqlen, seed,
                                                      batch_size, calibration_ids)
    was_training = model.training
    model.eval()
    inputs = capture_block_inputs(model, chunks, device) if needs_data else None
    removed_blocks, influence = [], None
    if plan.blocks_removed:
        influence, boundaries = block_removal_scores(Lifecycle(model, device=device, progress=progress), inputs)
        removed_blocks = choose_blocks(block_score, influence, boundaries, plan.blocks_removed)
        del boundaries
    if inputs is None:  # magnitude without compensation: weights alone decide
        inputs = []
    records = shrink_blocks(Lifecycle(model, device=device, progress=progress), layout, plan, inputs, removed_blocks,
                            score, compensate, damp)
    del inputs
    remove_blocks(model, layout, removed_blocks)
    config_changes = finalize_config(model, layout, plan, removed_blocks)
    model.train(was_training)
    _, blocks = find_blocks(model)
    return {
        "model": getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "method": "shrink",
        "ratio": ratio,
        "ratio_reached": round(plan.reached, 5),
        "ratio_step": round(plan.step, 5),
        "units": list(plan.units),
        "score": score,
        "block_score": block_score if plan.blocks_removed else None,
        "compensate": compensate,
        "multiple_of": multiple_of,
        "kept": {"intermediate_size": plan.intermediate, "num_attention_heads": plan.heads,
                 "num_key_value_heads": plan.kv_heads, "num_hidden_layers": costs.blocks - len(removed_blocks)},
        "config_changes": config_changes,
        "parameters": {"before": params_before, "after": parameter_count(model),
                       "blocks_before": block_params_before, "blocks_after": parameter_count(blocks)},
        "weight_bytes": {"before": bytes_before, "after": parameter_bytes(model)},
        "removed_blocks": removed_blocks,
        "block_influence": [round(value, 5) for value in influence] if influence else None,
        "blocks": {str(index): record for index, record in records.items() if record},
        "calibration": {"source": source if needs_data else None, "nsamples": nsamples if needs_data else 0,
                        "seqlen": seqlen if needs_data else 0, "seed": seed, "chunks": len(chunks) if chunks else 0},
        "shrink_seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": versions(),
    }
