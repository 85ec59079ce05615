"""The model card (README.md) of a pruned model folder, written from its llmprune report."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .sparse import sparsity_config
from .writer import REPORT_NAME

CARD_NAME = "README.md"

# Bundled aliases (see llmprune.io.loading) and the hub repositories their weights came from,
# so the card can name a real base model rather than a local alias.
ALIAS_SOURCES = {
    "llama": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "bert": "sentence-transformers/all-MiniLM-L6-v2",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}
EVAL_LABELS = {
    "ppl_before": "perplexity before pruning",
    "ppl_after": "perplexity after pruning",
    "seqlen": "evaluation window (tokens)",
    "windows": "evaluation windows",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_report(folder: str | Path) -> dict:
    path = Path(folder) / REPORT_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}  # a folder not pruned by us (or a damaged report) still gets a plain card


def base_model(report: dict) -> str | None:
    """A hub id for the source model, or None when it was a local folder or file."""
    source = str(report.get("model") or "")
    if source.lower() in ALIAS_SOURCES:
        return ALIAS_SOURCES[source.lower()]
    if HUB_ID.match(source) and not Path(source).expanduser().exists():
        return source
    return None


def _yaml_list(items: list[str]) -> str:
    # JSON strings are valid YAML scalars, which keeps "2:4" and odd names safe.
    return "\n".join(f"- {json.dumps(item)}" for item in items)


def _percent(value) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "n/a"


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _header(report: dict, base: str | None, title: str) -> list[str]:
    """The YAML metadata (base_model, library_name, tags) and the title."""
    method, pattern = report.get("method"), report.get("pattern")
    tags = ["pruned", "sparse", "llmprune"] if method != "shrink" else ["pruned", "structured-pruning", "llmprune"]
    tags += [str(t) for t in (method, pattern or ("unstructured" if method and method != "shrink" else None)) if t]
    meta = [f"base_model: {json.dumps(base)}"] if base else []
    meta += ["library_name: transformers", "tags:", _yaml_list(tags)]
    return ["---", *meta, "---", "", f"# {title}", ""]


def _shrink_section(report: dict, source: str) -> list[str]:
    params = report.get("parameters") or {}
    units = report.get("units")
    return [
        f"This model is `{source}` made smaller by llmprune's structured pruning (`llmprune shrink`): whole "
        "MLP channels, attention heads or blocks were removed, so it is an ordinary smaller dense model.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| ratio of the blocks' parameters removed | {report.get('ratio')} |",
        f"| units | {', '.join(units or []) if isinstance(units, list) else units} |",
        f"| parameters before / after | {params.get('before')} / {params.get('after')} |",
        "",
    ]


def _prune_section(report: dict, source: str) -> list[str]:
    method, pattern = report.get("method"), report.get("pattern")
    what = f"{pattern} semi-structured" if pattern else f"{_percent(report.get('target_sparsity'))} unstructured"
    lines = [
        f"This model is `{source}` pruned with **{method}** to {what} sparsity by llmprune.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {method} |",
        f"| pattern | {pattern or 'unstructured'} |",
        f"| target sparsity | {_percent(report.get('target_sparsity'))} |",
        f"| sparsity of the pruned layers | {_percent(report.get('total_sparsity'))} |",
        f"| pruned layers | {len(report.get('layers') or {})} |",
    ]
    calibration = report.get("calibration") or {}
    if calibration.get("source"):
        lines += [
            f"| calibration data | {calibration.get('source')} |",
            f"| calibration samples x length | {calibration.get('nsamples')} x {calibration.get('seqlen')} tokens |",
            f"| seed | {calibration.get('seed')} |",
        ]
    else:
        lines.append("| calibration data | none (data-free method) |")
    if report.get("prune_seconds") is not None:
        lines.append(f"| pruning time | {report['prune_seconds']} s |")
    return lines + [""]


def _evaluation_section(report: dict) -> list[str]:
    evaluation = report.get("eval") or {}
    if not evaluation:
        return []
    lines = ["## Evaluation", "", "| metric | value |", "|---|---|"]
    for key, value in evaluation.items():
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            lines.append(f"| {EVAL_LABELS.get(key, key)} | {_number(value)} |")
    return lines + [""]


def _loading_section(config: dict, repo: str, shrunk: bool) -> list[str]:
    sparse = sparsity_config(config)
    lines = ["## How to load", ""]
    if sparse:
        return lines + [
            f"The weights are stored in the compressed-tensors `{sparse.get('format')}` layout: zeros take "
            "no space on disk. Stock `transformers` cannot load this folder (it asks for the compressed-tensors "
            "package, whose current releases no longer read these layouts); llmprune restores the dense weights "
            "exactly:",
            "",
            "```python",
            "from huggingface_hub import snapshot_download",
            "from llmprune import load_pretrained",
            "",
            f'model = load_pretrained(snapshot_download("{repo}"))',
            "```",
            "",
            "or write a dense copy of a downloaded folder once: `llmprune decompress FOLDER FOLDER-dense`.",
        ]
    model_class = (config.get("architectures") or ["AutoModelForCausalLM"])[0]
    return lines + [
        "The weights are ordinary dense safetensors" + (":" if shrunk else " (the pruned weights are zeros):"),
        "",
        "```python",
        f"from transformers import {model_class}, AutoTokenizer",
        "",
        f'model = {model_class}.from_pretrained("{repo}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        "```",
    ]


def make_card(folder: str | Path, report: dict | None = None, repo_id: str | None = None) -> str:
    """Card text: YAML metadata (base_model, library_name, tags) and a body from the report."""
    folder = Path(folder)
    report = read_report(folder) if report is None else report
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    method = report.get("method")
    base = base_model(report)
    source = base or report.get("model") or "the source model"
    lines = _header(report, base, repo_id or folder.name)
    if method == "shrink":
        lines += _shrink_section(report, source)
    elif method:
        lines += _prune_section(report, source)
    else:
        lines += ["A model folder shared with llmprune. No pruning report was found next to the weights.", ""]
    lines += _evaluation_section(report)
    lines += _loading_section(config, repo_id or "THIS_REPO", method == "shrink")
    lines.append("")
    return "\n".join(lines)
