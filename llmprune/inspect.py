"""What is inside a model folder: per-layer sparsity, N:M conformance, parameters, bytes dense vs sparse.

Works on any folder of safetensors weights, pruned by llmprune or not, dense or in the
compressed sparse layout. Files are opened lazily and one weight is materialised at a
time, so inspecting a model needs about one layer of memory.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .anatomy import ROUTER_TENSOR, stores_experts_transposed, stores_transposed
from .errors import LLMPruneError
from .io.sparse import as_matrix, bitmask_bytes, iter_dense_tensors, nm_violations, sparsity_config, weight_files
from .io.writer import REPORT_NAME
from .methods import SparsityTarget

# 2-D weights that are lookup tables, not matrix multiplies: never pruned, reported apart.
EMBEDDING_NAME = re.compile(r"(embed|wte|wpe|lm_head|word_embeddings|position_embeddings|token_type_embeddings)")


@dataclass
class LayerInfo:
    name: str
    shape: list[int]
    params: int
    nonzeros: int
    sparsity: float
    nm_ok: bool | None  # None: not checked (an embedding, a router)
    stored: str  # "dense" or the compressed layout it was read from


@dataclass
class FolderInfo:
    folder: str
    pattern: str
    layers: list[LayerInfo] = field(default_factory=list)
    params: int = 0
    nonzeros: int = 0
    linear_params: int = 0
    linear_nonzeros: int = 0
    bytes_on_disk: int = 0
    dense_bytes: int = 0
    sparse_bytes: int = 0
    layout: str = "dense"
    report: dict | None = None

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzeros / self.params if self.params else 0.0

    @property
    def linear_sparsity(self) -> float:
        return 1 - self.linear_nonzeros / self.linear_params if self.linear_params else 0.0

    @property
    def nm_layers(self) -> tuple[int, int]:
        checked = [layer for layer in self.layers if layer.nm_ok is not None]
        return sum(layer.nm_ok for layer in checked), len(checked)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(sparsity=self.sparsity, linear_sparsity=self.linear_sparsity)
        data["nm_conforming_layers"], data["nm_checked_layers"] = self.nm_layers
        return data


def _tensor_names(folder: Path) -> list[str]:
    """Every tensor name of the folder's weight files (read from headers only)."""
    from safetensors import safe_open

    names = []
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names.extend(handle.keys())
    return names


def _compressed_modules(folder: Path) -> set[str]:
    """Modules stored compressed: those with a ``.bitmask`` tensor."""
    return {key[: -len(".bitmask")] for key in _tensor_names(folder) if key.endswith(".bitmask")}


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def inspect_folder(folder: str | Path, pattern: str = "2:4") -> FolderInfo:
    """Count parameters and non-zeros per 2-D weight, check ``pattern`` on the linear ones."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LLMPruneError(f"model folder not found: {folder}")
    target = SparsityTarget.parse(pattern=pattern)
    n, m = target.n, target.m
    sparse_config = sparsity_config(folder) if (folder / "config.json").is_file() else None
    layout = sparse_config.get("format", "sparse") if sparse_config else "dense"
    info = FolderInfo(folder=str(folder), pattern=f"{n}:{m}", layout=layout)
    info.bytes_on_disk = sum(path.stat().st_size for path in weight_files(folder))
    compressed = _compressed_modules(folder)
    compressed_label = layout if sparse_config else "compressed"
    # A family that stores its weights (inputs x outputs) has its N:M groups along the first axis;
    # a 3-D expert stack holds one matrix per expert, (outputs x inputs) unless its family says otherwise.
    model_type = _model_type(folder)
    transposed, experts_transposed = stores_transposed(model_type), stores_experts_transposed(model_type)
    stacked = set((sparse_config or {}).get("stacked") or ())
    has_experts = any(".experts." in key for key in _tensor_names(folder))
    for name, tensor in iter_dense_tensors(folder):
        params = tensor.numel()
        nonzeros = int(tensor.count_nonzero())
        dense_bytes = params * tensor.element_size()
        info.params += params
        info.nonzeros += nonzeros
        info.dense_bytes += dense_bytes
        is_stack = tensor.dim() == 3 and (name in stacked or not name.endswith((".weight", "_bias")))
        is_weight_matrix = (tensor.dim() == 2 and name.endswith(".weight")) or is_stack
        is_router = has_experts and bool(ROUTER_TENSOR.search(name))
        is_linear = is_weight_matrix and not EMBEDDING_NAME.search(name) and not is_router
        matrix = as_matrix(tensor, experts_transposed if is_stack else transposed)[0] if is_linear else tensor
        # What --save-format sparse would take: the bitmask layout where it is smaller.
        info.sparse_bytes += min(dense_bytes, bitmask_bytes(matrix)) if is_linear else dense_bytes
        if not is_weight_matrix:
            continue
        if is_linear:
            info.linear_params += params
            info.linear_nonzeros += nonzeros
        module = name if is_stack else name[: -len(".weight")]
        info.layers.append(
            LayerInfo(
                name=module,
                shape=list(tensor.shape),
                params=params,
                nonzeros=nonzeros,
                sparsity=1 - nonzeros / params if params else 0.0,
                nm_ok=(nm_violations(matrix, n, m) == 0) if is_linear else None,
                stored=compressed_label if module in compressed else "dense",
            )
        )
    # Files list keys alphabetically (layers.10 before layers.2); people read in model order.
    info.layers.sort(key=lambda layer: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", layer.name)])
    report_path = folder / REPORT_NAME
    if report_path.is_file():
        try:
            info.report = json.loads(report_path.read_text(encoding="utf-8"))
        except ValueError:
            info.report = None  # a damaged report does not make the weights unreadable
    return info


def _mib(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB"


def format_table(info: FolderInfo, show_layers: bool = True) -> str:
    """The human-readable summary printed by ``llmprune inspect``."""
    lines = [f"{info.folder}  (weights stored {info.layout})"]
    if show_layers and info.layers:
        width = max(len(layer.name) for layer in info.layers)
        lines.append(f"  {'layer':<{width}}  {'shape':>13}  {'sparsity':>8}  {info.pattern:>5}  stored")
        for layer in info.layers:
            shape = "x".join(str(s) for s in layer.shape)
            nm = "-" if layer.nm_ok is None else ("yes" if layer.nm_ok else "no")
            lines.append(f"  {layer.name:<{width}}  {shape:>13}  {layer.sparsity:>8.2%}  {nm:>5}  {layer.stored}")
    ok, checked = info.nm_layers
    lines += [
        f"parameters:        {info.params:,} ({info.nonzeros:,} non-zero, {info.sparsity:.2%} zeros)",
        f"linear layers:     {info.linear_params:,} parameters, {info.linear_sparsity:.2%} zeros",
        f"{info.pattern} pattern:       {ok} of {checked} linear layers conform",
        f"bytes on disk:     {_mib(info.bytes_on_disk)} (weight files)",
        f"dense would take:  {_mib(info.dense_bytes)}",
        f"sparse would take: {_mib(info.sparse_bytes)} ({info.sparse_bytes / max(info.dense_bytes, 1):.2f}x dense)",
    ]
    if info.report:
        method, pattern, target = (info.report.get(k) for k in ("method", "pattern", "target_sparsity"))
        what = pattern or (f"{target:.0%} unstructured" if isinstance(target, (int, float)) else "unstructured")
        lines.append(f"pruned by llmprune: {method}, {what}")
    return "\n".join(lines)
