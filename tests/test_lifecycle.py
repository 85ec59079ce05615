"""The one block lifecycle: shared by every mode, sequential on pruned outputs, and the folders it writes
(sparse ones too) are read back by every command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import llmprune
from llmprune.anatomy import find_blocks, prunable_weights
from llmprune.cli import main
from llmprune.engine import Lifecycle
from llmprune.inspect import inspect_folder
from llmprune.methods.wanda import Wanda
from tests.conftest import random_calibration, tiny_model, tiny_tokenizer


def _folder(tmp_path: Path, family: str = "llama") -> Path:
    folder = tmp_path / f"in-{family}"
    tiny_model(family).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _weights(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))


# ---------------------------------------------------------------- one loop for every mode

def _spy_on_sweeps(monkeypatch) -> list[tuple[str, list[int], bool]]:
    """Record each sweep of the lifecycle: its kind, the blocks visited in order, and whether it wrote."""
    sweeps = []
    original = Lifecycle.sweep

    def spy(self, desc, visit, write):
        visited = []

        def counting(index, block):
            visited.append(index)
            return visit(index, block)

        original(self, desc, counting, write)
        sweeps.append((desc.split(" (")[0], visited, write))

    monkeypatch.setattr(Lifecycle, "sweep", spy)
    return sweeps


@pytest.mark.parametrize("options", [dict(method="wanda", sparsity=0.5), dict(method="sparsegpt", sparsity=0.6, owl=True),
                                     dict(method="wanda", sparsity=0.5, batch_size=2)], ids=["fused", "owl", "chunked"])
def test_streaming_and_in_memory_walk_the_same_lifecycle(tmp_path, monkeypatch, options):
    source = _folder(tmp_path)
    sweeps = _spy_on_sweeps(monkeypatch)
    model, tokenizer = llmprune.load_model(str(source), device="cpu")
    report = llmprune.prune(model, tokenizer, calibration_ids=random_calibration(), progress=False, device="cpu", **options)
    llmprune.save_pretrained(model, tokenizer, tmp_path / "memory", report)
    in_memory = list(sweeps)
    sweeps.clear()
    llmprune.prune_folder(str(source), tmp_path / "stream", calibration_ids=random_calibration(), progress=False, device="cpu", **options)
    assert sweeps == in_memory
    assert in_memory[-1][1:] == ([0, 1], True)  # the pruning sweep visits each block once and writes it
    assert len(in_memory) == (2 if options.get("owl") else 1)  # OWL's measuring sweep is the same loop
    assert _weights(tmp_path / "memory") == _weights(tmp_path / "stream")


class RecordingWanda(Wanda):
    """Wanda that keeps a copy of the statistics each weight was pruned from."""

    name = "wanda"

    def prune(self, weight, stats, target):
        self.stats_of.append(stats.clone())
        return super().prune(weight, stats, target)


def test_every_layer_is_calibrated_on_what_the_pruned_model_feeds_it(monkeypatch):
    """Block 1 sees block 0's *pruned* outputs, and a later layer of a block sees the pruned earlier ones.

    After pruning, the finished model is run once more with hooks: each layer's input then is exactly
    what the engine should have gathered its statistics from (the fused single pass, true sequential).
    Calibrating on the unpruned outputs of the block before, or on dense earlier layers, fails this.
    """
    model = tiny_model("llama")
    ids = random_calibration()
    method = RecordingWanda()
    method.stats_of = []
    import llmprune.api.build as build_module

    monkeypatch.setattr(build_module, "get_method", lambda name, **kw: method)
    llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=ids, progress=False, device="cpu")
    path, blocks = find_blocks(model)
    order = [(index, name) for index, block in enumerate(blocks) for name in prunable_weights(block)]
    gathered = dict(zip(order, method.stats_of))
    seen_after = {}
    handles = []
    for index, block in enumerate(blocks):
        for name, weight in prunable_weights(block).items():
            def hook(module, args, key=(index, name)):
                rows = args[0].reshape(-1, args[0].shape[-1]).float()
                seen_after[key] = rows.pow(2).sum(0)
            handles.append(weight.module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    for key, stats in gathered.items():
        torch.testing.assert_close(stats, seen_after[key], rtol=1e-5, atol=1e-6, msg=f"{key}")
    # The test can tell: the dense model feeds block 1 something else.
    dense = tiny_model("llama")
    dense_in = {}

    def record(module, args):
        dense_in["x"] = args[0].reshape(-1, args[0].shape[-1]).float().pow(2).sum(0)

    dense.model.layers[1].self_attn.q_proj.register_forward_pre_hook(record)
    with torch.no_grad():
        dense(input_ids=ids)
    assert not torch.allclose(dense_in["x"], gathered[(1, "self_attn.q_proj")], rtol=1e-3)


# ---------------------------------------------------------------- GPT-2's Conv1D weights read the right way round

def test_gpt2_at_2_4_saves_sparse_and_inspect_confirms_every_layer(tmp_path):
    model, tokenizer = tiny_model("gpt2"), tiny_tokenizer()
    report = llmprune.prune(model, tokenizer, method="wanda", pattern="2:4", calibration_ids=random_calibration(), progress=False)
    out = llmprune.save_pretrained(model, tokenizer, tmp_path / "sparse", report, save_format="sparse")
    info = inspect_folder(out, "2:4")
    assert info.nm_layers == (8, 8)
    config = json.loads((out / "config.json").read_text())
    assert len(config["quantization_config"]["sparsity_config"]["transposed"]) == 8
    reloaded, _ = llmprune.load_model(str(out), device="cpu")
    for name, module in model.named_modules():
        if hasattr(module, "weight") and isinstance(module.weight, nn.Parameter):
            assert torch.equal(dict(reloaded.named_modules())[name].weight, module.weight), name
    # The dense folder of the same model is read the same way by inspect.
    dense = llmprune.save_pretrained(model, tokenizer, tmp_path / "dense", report)
    assert inspect_folder(dense, "2:4").nm_layers == (8, 8)


# ---------------------------------------------------------------- sparse folders are read by every command

@pytest.fixture
def sparse_folder(tmp_path) -> Path:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    report = llmprune.prune(model, tokenizer, method="wanda", sparsity=0.5, calibration_ids=random_calibration(), progress=False)
    return llmprune.save_pretrained(model, tokenizer, tmp_path / "sparse", report, save_format="sparse")


def test_sparse_folder_evaluates_inspects_and_pushes(sparse_folder, tmp_path, capsys):
    text = tmp_path / "words.txt"
    text.write_text("the cat sat on the mat and the dog ran in the park while birds sang. " * 30, encoding="utf-8")
    assert main(["eval", "--model", str(sparse_folder), "--ppl", str(text), "--seqlen", "16", "--no-progress",
                 "--json", str(tmp_path / "eval.json")]) == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["ppl"][str(text)]["ppl"] > 1
    assert main(["inspect", str(sparse_folder)]) == 0
    assert "sparse-bitmask" in capsys.readouterr().out
    assert main(["push", str(sparse_folder), "--repo-id", "me/tiny", "--dry-run"]) == 0


def test_sparse_folder_prunes_again_in_memory_and_streaming_alike(sparse_folder, tmp_path):
    model, tokenizer = llmprune.load_model(str(sparse_folder), device="cpu")
    assert model.config.to_dict().get("quantization_config") is None
    before = {n: (w.matrix() == 0) for n, w in prunable_weights(model.model.layers[0]).items()}
    report = llmprune.prune(model, tokenizer, method="sparsegpt", sparsity=0.7, calibration_ids=random_calibration(), progress=False)
    assert report["total_sparsity"] == pytest.approx(0.7, abs=0.01)
    for name, weight in prunable_weights(model.model.layers[0]).items():
        assert (weight.matrix() == 0)[before[name]].all(), name  # what was zero stays zero
    llmprune.save_pretrained(model, tokenizer, tmp_path / "memory", report)
    llmprune.prune_folder(str(sparse_folder), tmp_path / "stream", method="sparsegpt", sparsity=0.7,
                          calibration_ids=random_calibration(), progress=False)
    assert _weights(tmp_path / "memory") == _weights(tmp_path / "stream")


# ---------------------------------------------------------------- a report that cannot overstate

class HiddenMatrices(nn.Module):
    """An MLP whose big matrices are bare parameters, not linear layers: the engine cannot see them."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.up = nn.Parameter(torch.randn(width, hidden) * 0.02)
        self.down = nn.Parameter(torch.randn(hidden, width) * 0.02)

    def forward(self, x):
        return torch.relu(x @ self.up.t()) @ self.down.t()


def test_coverage_warns_when_the_main_weights_are_invisible(capsys):
    model = tiny_model("llama")
    for block in model.model.layers:
        block.mlp = HiddenMatrices(64, 1024)
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=random_calibration(), progress=False)
    coverage = report["coverage"]
    assert coverage["pruned_share_of_block_matrices"] < 0.2
    assert coverage["left_dense"][0]["tensor"].endswith(("mlp.up", "mlp.down"))
    assert coverage["left_dense"][0]["reason"] == "not prunable"
    warning = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warning) == 1 and ("mlp.up" in warning[0] or "mlp.down" in warning[0])


def test_coverage_is_complete_and_quiet_on_a_plain_model(capsys):
    report = llmprune.prune(tiny_model("llama"), None, method="wanda", sparsity=0.5, calibration_ids=random_calibration(), progress=False)
    assert report["coverage"]["pruned_share_of_block_matrices"] == 1.0
    assert {entry["reason"] for entry in report["coverage"]["left_dense"]} == {"not prunable"}  # the norms
    assert "warning" not in capsys.readouterr().out


def test_ignored_layers_are_named_in_the_coverage():
    report = llmprune.prune(tiny_model("llama"), None, method="wanda", sparsity=0.5, ignore=["mlp.down_proj"],
                            calibration_ids=random_calibration(), progress=False)
    ignored = {e["tensor"] for e in report["coverage"]["left_dense"] if e["reason"] == "ignored"}
    assert ignored == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
