"""``llmprune inspect`` on dense (pruned or not) and sparse folders."""
from __future__ import annotations

import json

import pytest
import torch

from io_helpers import block_linears, prune_24, prune_rows, report_for, tiny_llama
from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.inspect import format_table, inspect_folder
from llmprune.io.writer import save_pruned_model


def test_unpruned_dense_model(tmp_path):
    model = tiny_llama(torch.float32, tie=False)
    folder = save_pruned_model(model, None, tmp_path / "dense")
    info = inspect_folder(folder)
    assert info.layout == "dense"
    assert info.params == sum(t.numel() for t in model.state_dict().values())
    assert info.nonzeros == sum(int(t.count_nonzero()) for t in model.state_dict().values())
    assert info.bytes_on_disk == (folder / "model.safetensors").stat().st_size
    assert info.dense_bytes == 4 * info.params
    assert info.sparse_bytes == info.dense_bytes  # nothing would shrink
    linears = {layer.name: layer for layer in info.layers if layer.nm_ok is not None}
    assert set(linears) == set(block_linears(model))  # embeddings and lm_head are not checked
    assert not any(layer.nm_ok for layer in linears.values())
    names = [layer.name for layer in info.layers]
    assert names.index("model.layers.0.mlp.down_proj") < names.index("model.layers.1.mlp.down_proj")


def test_pruned_dense_model_figures(tmp_path):
    model = tiny_llama(torch.bfloat16, tie=False)
    prune_rows(model, 0.75)
    folder = save_pruned_model(model, None, tmp_path / "dense")
    info = inspect_folder(folder, pattern="4:8")
    layer = next(layer for layer in info.layers if layer.name == "model.layers.1.self_attn.k_proj")
    assert layer.shape == [32, 64] and layer.params == 2048
    assert layer.nonzeros == 32 * 16 and layer.sparsity == pytest.approx(0.75)
    assert layer.nm_ok is False  # 75% per row is not 4:8 in every group
    assert info.linear_sparsity == pytest.approx(0.75)
    # the bitmask layout: kept values, one bit per weight, an int64 offset per row, the shape
    linears = block_linears(model)
    expected = sum(
        int(m.weight.count_nonzero()) * 2 + m.weight.shape[0] * (m.weight.shape[1] // 8 + 8) + 16 for m in linears.values()
    )
    expected += sum(t.numel() * 2 for k, t in model.state_dict().items() if k[: -len(".weight")] not in linears)
    assert info.sparse_bytes == expected


def test_sparse_24_folder_matches_its_dense_twin(tmp_path, capsys):
    model = tiny_llama(torch.float16)
    layers = prune_24(model)
    dense = inspect_folder(save_pruned_model(model, None, tmp_path / "dense"))
    sparse_folder = save_pruned_model(model, None, tmp_path / "sparse", report_for(layers, "2:4"), save_format="sparse")
    sparse = inspect_folder(sparse_folder)
    assert sparse.layout == "sparse-24-bitmask"
    assert (sparse.params, sparse.nonzeros, sparse.dense_bytes) == (dense.params, dense.nonzeros, dense.dense_bytes)
    assert sparse.nm_layers == (14, 14) and dense.nm_layers == (14, 14)
    assert sparse.bytes_on_disk < dense.bytes_on_disk
    stored = {layer.name: layer.stored for layer in sparse.layers}
    assert stored["model.layers.0.mlp.up_proj"] == "sparse-24-bitmask" and stored["model.embed_tokens"] == "dense"
    text = format_table(sparse)
    assert "2:4 pattern:       14 of 14 linear layers conform" in text
    assert "pruned by llmprune: magnitude, 2:4" in text


def test_cli_json_and_errors(tmp_path, capsys):
    model = tiny_llama()
    prune_rows(model, 0.5)
    folder = save_pruned_model(model, None, tmp_path / "m")
    assert main(["inspect", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["linear_sparsity"] == pytest.approx(0.5) and data["pattern"] == "2:4"
    assert main(["inspect", str(folder), "--summary"]) == 0
    assert "model.layers.0" not in capsys.readouterr().out
    assert main(["inspect", str(folder), "--pattern", "4:2"]) == 2
    assert "impossible pattern '4:2'" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    with pytest.raises(LLMPruneError, match="no .safetensors weights"):
        inspect_folder(tmp_path)
