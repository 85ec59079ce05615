"""A pruning run as one dataclass. CLI flags and YAML recipes (configs/*.yaml) both fill it."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .errors import LLMPruneError


@dataclass
class PruneConfig:
    model: str = "llama"
    method: str = "wanda"
    sparsity: float | None = None  # None with no pattern means 0.5
    pattern: str | None = None
    output: str | None = None
    overwrite: bool = False
    calibration: str = "wikipedia"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    targets: list[str] | None = None
    ignore: list[str] | None = None
    dtype: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    eval_ppl: bool = False
    eval_seqlen: int = 512
    eval_windows: int | None = None
    ppl: str | None = None  # after pruning: comma-separated perplexity sources (see `llmprune eval`)
    tasks: str | None = None  # after pruning: comma-separated lm-eval tasks
    num_fewshot: int | None = None
    limit: float | None = None
    eval_batch_size: int | None = None
    save_format: str = "dense"
    push_to_hub: str | None = None
    report: str | None = None  # where to write the report JSON when there is no --output
    progress: bool = True
    owl: bool = False  # outlier-weighted per-block sparsities (unstructured only)
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    stream: bool = False  # load, prune and write one block at a time (never the whole model)
    method_options: dict = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "PruneConfig":
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise LLMPruneError(f"cannot read config {path}: {exc}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise LLMPruneError(f"config {path} must be a mapping of option: value")
        data = {key.replace("-", "_"): value for key, value in data.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LLMPruneError(f"config {path}: unknown option(s) {', '.join(unknown)}")
        data.update(overrides)
        return cls(**data)
