"""Mixture-of-experts models: every routed expert pruned from the tokens routed to it, routers left
dense, the report's coverage honest, and every mode (single pass, chunks, streaming, OWL, N:M, sparse
format, inspect, decompress) on tiny random models of each family."""
import hashlib
import json

import pytest
import torch
import transformers
from torch import nn

import llmprune
from llmprune.anatomy import block_weights, find_blocks, router_weights
from llmprune.engine import ExpertPolicy, capture_block_inputs, gather_block_statistics
from llmprune.inspect import inspect_folder
from llmprune.io.loading import decompress_folder
from llmprune.io.sparse import nm_violations
from llmprune.methods.sparsegpt import SparseGPT
from llmprune.methods.wanda import Wanda
from tests.conftest import random_calibration, tiny_model, tiny_tokenizer
from tests.moe_helpers import MOE_FAMILIES, tiny_moe

CALIBRATION = random_calibration(nsamples=4, seqlen=32)
PROBE = random_calibration(nsamples=2, seqlen=16, seed=1)
# Thresholds off unless a test is about them: the tiny runs give each expert a few dozen tokens.
NO_THRESHOLD = dict(min_expert_tokens=1)


def expert_matrices(model):
    _, blocks = find_blocks(model)
    return {f"{i}.{name}": w for i, block in enumerate(blocks) for name, w in block_weights(block).items() if w.expert is not None}


def router_tensors(model):
    _, blocks = find_blocks(model)
    return {f"{i}.{name}": w.parameter.detach().clone() for i, block in enumerate(blocks) for name, w in router_weights(block).items()}


def logits(model):
    with torch.no_grad():
        return model(PROBE).logits


@pytest.mark.parametrize("family", sorted(MOE_FAMILIES))
@pytest.mark.parametrize("method, target", [("sparsegpt", {"sparsity": 0.5}), ("wanda", {"pattern": "2:4"})])
def test_every_expert_at_target_routers_untouched_and_the_folder_reloads(family, method, target, tmp_path):
    model = tiny_moe(family)
    routers = router_tensors(model)
    assert routers, "every family has a router"
    report = llmprune.prune(model, None, method=method, calibration_ids=CALIBRATION, progress=False, **NO_THRESHOLD, **target)
    experts = expert_matrices(model)
    assert len(experts) == 4 * 3 * (1 if family == "deepseek_v3" else 2)  # gate, up, down of 4 experts per MoE block
    for name, weight in experts.items():
        if "pattern" in target:
            assert nm_violations(weight.matrix().contiguous(), 2, 4) == 0, name  # groups along the expert's inputs
        else:
            assert weight.sparsity() == 0.5, name
    for name, before in router_tensors(model).items():
        assert torch.equal(before, routers[name]), f"router {name} changed"
    assert report["total_sparsity"] == pytest.approx(0.5)
    assert report["coverage"]["pruned_share_of_block_matrices"] > 0.9
    assert all(entry["reason"] in ("router", "not prunable") for entry in report["coverage"]["left_dense"])
    for save_format in ("dense", "sparse"):
        folder = llmprune.save_pretrained(model, tiny_tokenizer(), tmp_path / save_format, report, save_format=save_format)
        reloaded, _ = llmprune.load_model(str(folder))
        assert torch.equal(logits(reloaded), logits(model)), save_format


def test_the_saved_weights_are_as_sparse_as_the_report_says(tmp_path):
    """The issue's measurement: read back from the safetensors, not from the model in memory."""
    from safetensors.torch import load_file

    model = tiny_moe("qwen2_moe")
    report = llmprune.prune(model, None, method="sparsegpt", sparsity=0.5, calibration_ids=CALIBRATION, progress=False)
    folder = llmprune.save_pretrained(model, None, tmp_path / "out", report)
    saved = load_file(folder / "model.safetensors")
    blocks = {k: v for k, v in saved.items() if ".layers." in k and v.dim() == 2 and not k.endswith(("mlp.gate.weight", "shared_expert_gate.weight"))}
    zeros = sum(int((v == 0).sum()) for v in blocks.values()) / sum(v.numel() for v in blocks.values())
    assert zeros == pytest.approx(report["total_sparsity"]) == pytest.approx(0.5)
    assert any(".experts.3.down_proj.weight" in k for k in blocks)


# ------------------------------------------------------------ statistics from exactly the routed rows

def moe_input_and_routing(model, block, logits_of):
    """The MoE module's input rows (recorded by the test's own hook) and the top-2 experts per row,
    computed here from the router's weights."""
    seen = []
    handle = block.mlp.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(CALIBRATION)
    handle.remove()
    rows = seen[0]
    chosen = torch.topk(logits_of(rows), 2, dim=-1).indices
    return rows, chosen


def gathered(model, provider, policy, chunks=1):
    inputs = capture_block_inputs(model, list(CALIBRATION.chunk(chunks)), "cpu")
    stats, _ = gather_block_statistics(model.model.layers[0], provider, inputs, experts=policy)
    return stats


def gpt_oss_down_inputs(experts, e, rows):
    """gpt-oss's expert: interleaved gate/up with biases, stored (experts, inputs, outputs); clamped SwiGLU."""
    gate_up = rows @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]
    gate, up = gate_up[:, 0::2].clamp(max=experts.limit), gate_up[:, 1::2].clamp(-experts.limit, experts.limit)
    return (up + 1) * (gate * torch.sigmoid(gate * experts.alpha))


@torch.no_grad()
def test_gpt_oss_statistics_are_those_of_the_routed_rows_and_an_unrouted_expert_has_none():
    model = tiny_moe("gpt_oss")
    block = model.model.layers[0]
    block.mlp.router.bias.data[3] = -1e4  # expert 3 never chosen
    router = block.mlp.router
    rows, chosen = moe_input_and_routing(model, block, lambda x: x @ router.weight.t() + router.bias)
    experts = block.mlp.experts
    stats = gathered(model, Wanda(), ExpertPolicy(min_tokens=1, fallback="magnitude"))
    for e in range(3):
        mine = rows[(chosen == e).any(dim=1)]
        assert mine.shape[0] > 0
        for part in ("gate_proj", "up_proj"):
            torch.testing.assert_close(stats[f"mlp.experts.{e}.{part}"][1], mine.square().sum(0), rtol=1e-5, atol=1e-5)
        down = gpt_oss_down_inputs(experts, e, mine)
        torch.testing.assert_close(stats[f"mlp.experts.{e}.down_proj"][1], down.square().sum(0), rtol=1e-5, atol=1e-5)
    assert not (chosen == 3).any()
    assert all(stats[f"mlp.experts.3.{part}"][1] is None for part in ("gate_proj", "up_proj", "down_proj"))


@torch.no_grad()
def test_qwen3_hessians_are_those_of_the_routed_rows_not_scaled_by_routing_weights():
    model = tiny_moe("qwen3_moe")
    block = model.model.layers[0]
    rows, chosen = moe_input_and_routing(model, block, lambda x: torch.softmax(x @ block.mlp.gate.weight.t(), dim=-1))
    experts = block.mlp.experts
    stats = gathered(model, SparseGPT(), ExpertPolicy(min_tokens=1))
    for e in range(4):
        mine = rows[(chosen == e).any(dim=1)]
        hessian = stats[f"mlp.experts.{e}.gate_proj"][1]
        assert hessian.tokens == mine.shape[0]
        torch.testing.assert_close(hessian.matrix, 2 * mine.t() @ mine / mine.shape[0], rtol=1e-4, atol=1e-5)
        gate, up = (mine @ experts.gate_up_proj[e].t()).chunk(2, dim=-1)
        down = nn.functional.silu(gate) * up
        torch.testing.assert_close(stats[f"mlp.experts.{e}.down_proj"][1].matrix, 2 * down.t() @ down / down.shape[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunks", [1, 2])  # two chunks: the all-tokens statistics come from a second partial pass
@torch.no_grad()
def test_experts_below_the_threshold_fall_back_to_all_tokens(chunks):
    model = tiny_moe("qwen3_moe")
    block = model.model.layers[0]
    rows, _ = moe_input_and_routing(model, block, lambda x: x @ block.mlp.gate.weight.t())
    stats = gathered(model, Wanda(), ExpertPolicy(min_tokens=10**6, fallback="all-tokens"), chunks)
    experts = block.mlp.experts
    for e in range(4):
        torch.testing.assert_close(stats[f"mlp.experts.{e}.up_proj"][1], rows.square().sum(0), rtol=1e-5, atol=1e-5)
        gate, up = (rows @ experts.gate_up_proj[e].t()).chunk(2, dim=-1)
        torch.testing.assert_close(stats[f"mlp.experts.{e}.down_proj"][1], (nn.functional.silu(gate) * up).square().sum(0),
                                   rtol=1e-5, atol=1e-5)


def test_single_pass_prunes_down_from_the_intermediates_of_the_pruned_gate_and_up(monkeypatch):
    from llmprune.engine import pruning

    seen = {}
    original = pruning.prune_weight

    def spy(weight, method, stats, target):
        if weight.name == "mlp.experts.1.down_proj" and "down" not in seen:
            seen["down"] = stats.clone()
        original(weight, method, stats, target)

    monkeypatch.setattr(pruning, "prune_weight", spy)
    model = tiny_moe("qwen3_moe")
    llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=CALIBRATION, progress=False, **NO_THRESHOLD)
    block = model.model.layers[0]
    # The pruned block's MoE input is what the single pass saw there (its attention was pruned first).
    rows, chosen = moe_input_and_routing(model, block, lambda x: torch.softmax(x @ block.mlp.gate.weight.t(), dim=-1))
    mine = rows[(chosen == 1).any(dim=1)]
    gate, up = (mine @ block.mlp.experts.gate_up_proj[1].t()).chunk(2, dim=-1)  # gate/up as pruned
    assert (block.mlp.experts.gate_up_proj[1] == 0).float().mean() == 0.5
    torch.testing.assert_close(seen["down"], (nn.functional.silu(gate) * up).square().sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [None, 2])
def test_the_report_gives_tokens_per_expert_and_the_fallbacks(batch_size):
    model = tiny_moe("gpt_oss")
    for block in model.model.layers:
        block.mlp.router.bias.data[3] = -1e4
    report = llmprune.prune(model, None, method="sparsegpt", sparsity=0.5, calibration_ids=CALIBRATION, progress=False,
                            batch_size=batch_size, min_expert_tokens=1, expert_fallback="magnitude")
    entry = report["experts"]
    assert (entry["statistics"], entry["min_tokens"], entry["fallback"]) == ("routed", 1, "magnitude")
    assert entry["experts"] == 8 and entry["experts_fell_back"] == 2
    for module in entry["modules"].values():
        assert sum(module["tokens"]) == CALIBRATION.numel() * 2 and module["tokens"][3] == 0
        assert module["fell_back"] == {"3": "magnitude"}
    assert all(w.sparsity() == 0.5 for w in expert_matrices(model).values())  # the unrouted expert too


def test_all_tokens_for_every_expert_is_an_option():
    model = tiny_moe("mixtral")
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=CALIBRATION, progress=False,
                            expert_statistics="all-tokens")
    assert report["experts"]["statistics"] == "all-tokens" and report["experts"]["experts_fell_back"] == 0
    assert all(w.sparsity() == 0.5 for w in expert_matrices(model).values())


def test_a_bad_expert_option_fails_before_any_work():
    with pytest.raises(llmprune.LLMPruneError, match="expert fallback"):
        llmprune.prune(tiny_moe("mixtral"), None, calibration_ids=CALIBRATION, expert_fallback="nearest")


# ------------------------------------------------------------ routers, modes

def test_routers_are_pruned_only_when_targets_name_them():
    model = tiny_moe("qwen2_moe")
    experts_before = {n: w.matrix().clone() for n, w in expert_matrices(model).items()}
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=CALIBRATION, progress=False,
                            targets=["mlp.gate", "mlp.shared_expert_gate"])
    assert sorted(report["layers"]) == [f"model.layers.{i}.mlp.{n}" for i in range(2) for n in ("gate", "shared_expert_gate")]
    assert model.model.layers[0].mlp.gate.weight.eq(0).float().mean() == 0.5
    assert all(torch.equal(w.matrix(), experts_before[n]) for n, w in expert_matrices(model).items())


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.name != "llmprune_report.json"}


@pytest.mark.parametrize("family", ["qwen2_moe", "gpt_oss"])  # saved as 2-D weights per expert / as fused 3-D tensors
def test_streaming_writes_the_same_bytes_as_in_memory(family, tmp_path):
    source = tmp_path / "source"
    tiny_moe(family).save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    options = dict(method="sparsegpt", sparsity=0.5, calibration_ids=CALIBRATION, progress=False)
    model, tokenizer = llmprune.load_model(str(source))
    report = llmprune.prune(model, tokenizer, **options)
    llmprune.save_pretrained(model, tokenizer, tmp_path / "memory", report)
    streamed = llmprune.prune_folder(str(source), tmp_path / "stream", **options)
    assert digest(tmp_path / "memory") == digest(tmp_path / "stream")
    assert streamed["layers"] == report["layers"] and streamed["experts"] == report["experts"]


def test_streaming_reads_a_sparse_moe_folder(tmp_path):
    model = tiny_moe("qwen2_moe")
    report = llmprune.prune(model, None, method="magnitude", sparsity=0.5, progress=False)
    sparse = llmprune.save_pretrained(model, tiny_tokenizer(), tmp_path / "sparse", report, save_format="sparse")
    options = dict(method="wanda", sparsity=0.6, calibration_ids=CALIBRATION, progress=False)
    again, tokenizer = llmprune.load_model(str(sparse))
    llmprune.save_pretrained(again, tokenizer, tmp_path / "memory", llmprune.prune(again, tokenizer, **options))
    llmprune.prune_folder(str(sparse), tmp_path / "stream", **options)
    assert digest(tmp_path / "memory") == digest(tmp_path / "stream")


def test_owl_gives_moe_blocks_their_own_sparsity_with_the_mean_kept():
    model = tiny_moe("qwen3_moe")
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, owl=True, owl_lambda=0.1, calibration_ids=CALIBRATION,
                            progress=False, **NO_THRESHOLD)
    assert report["total_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert len(set(report["owl"]["block_sparsity"])) == 2


@pytest.mark.parametrize("family", ["deepseek_v3", "gpt_oss"])
def test_sparse_folder_inspect_and_decompress(family, tmp_path):
    model = tiny_moe(family)
    report = llmprune.prune(model, None, method="wanda", pattern="2:4", calibration_ids=CALIBRATION, progress=False)
    sparse = llmprune.save_pretrained(model, tiny_tokenizer(), tmp_path / "sparse", report, save_format="sparse")
    config = json.loads((sparse / "config.json").read_text())["quantization_config"]["sparsity_config"]
    info = inspect_folder(sparse, pattern="2:4")
    ok, checked = info.nm_layers
    assert ok == checked > 0 and info.linear_sparsity == pytest.approx(0.5)
    assert info.bytes_on_disk < info.dense_bytes
    if family == "gpt_oss":  # fused experts stay one 3-D tensor, compressed expert by expert along their inputs
        assert "model.layers.0.mlp.experts.gate_up_proj" in config["stacked"] and "model.layers.0.mlp.experts.down_proj" in config["transposed"]
    dense = decompress_folder(sparse, tmp_path / "dense")
    plain = transformers.AutoModelForCausalLM.from_pretrained(dense)
    assert torch.equal(logits(plain), logits(model))


def test_cli_prunes_an_moe_folder_and_eval_reads_it(tmp_path, calibration_text, capsys):
    from llmprune.cli import main

    source = tmp_path / "moe"
    tiny_moe("qwen2_moe").save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    out = tmp_path / "pruned"
    code = main(["--model", str(source), "--method", "sparsegpt", "--sparsity", "0.5", "--nsamples", "4", "--seqlen", "32",
                 "--calibration", str(calibration_text), "--output", str(out), "--no-progress"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "warning" not in stdout
    report = json.loads((out / "llmprune_report.json").read_text())
    assert report["total_sparsity"] == pytest.approx(0.5) and report["experts"]["experts"] == 8
    code = main(["eval", "--model", str(out), "--ppl", str(calibration_text), "--seqlen", "16", "--eval-windows", "2", "--no-progress"])
    assert code == 0 and "ppl" in capsys.readouterr().out.lower()


# ------------------------------------------------------------ per-expert nn.Linear lists, invisible weights

class ListMoE(nn.Module):
    """The older layout: a router Linear and a ModuleList of per-expert MLPs called on their routed rows."""

    def __init__(self, hidden: int, width: int, experts: int = 4, top_k: int = 2):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(
            nn.ModuleDict({"w1": nn.Linear(hidden, width, bias=False), "w2": nn.Linear(width, hidden, bias=False)})
            for _ in range(experts))
        for expert in self.experts:
            expert.forward = lambda x, e=expert: e["w2"](torch.relu(e["w1"](x)))

    def forward(self, hidden):
        flat = hidden.reshape(-1, hidden.shape[-1])
        weights, chosen = torch.topk(torch.softmax(self.gate(flat), dim=-1), self.top_k, dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None])
        return out.reshape(hidden.shape)


def test_per_expert_linear_lists_are_pruned_from_their_routed_rows():
    model = tiny_model("llama")
    for block in model.model.layers:
        block.mlp = ListMoE(64, 32)
    gate_before = model.model.layers[0].mlp.gate.weight.clone()
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=CALIBRATION, progress=False, **NO_THRESHOLD)
    names = set(report["layers"])
    assert "model.layers.0.mlp.experts.3.w1" in names and "model.layers.0.mlp.gate" not in names
    assert torch.equal(model.model.layers[0].mlp.gate.weight, gate_before)
    module = report["experts"]["modules"]["model.layers.0.mlp.experts"]
    assert module["experts"] == 4 and sum(module["tokens"]) == CALIBRATION.numel() * 2


class InvisibleExperts(nn.Module):
    """Fused 3-D experts under names no layout knows: the engine cannot run them, so it cannot see them."""

    def __init__(self, hidden: int, width: int, experts: int = 4):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(experts, width, hidden) * 0.02)
        self.w_out = nn.Parameter(torch.randn(experts, hidden, width) * 0.02)

    def forward(self, hidden):
        return torch.relu(hidden @ self.w_in[0].t()) @ self.w_out[0].t()


def test_coverage_warns_when_fused_experts_are_invisible(capsys):
    model = tiny_model("llama")
    for block in model.model.layers:
        block.mlp = InvisibleExperts(64, 512)
    report = llmprune.prune(model, None, method="wanda", sparsity=0.5, calibration_ids=CALIBRATION, progress=False)
    assert report["coverage"]["pruned_share_of_block_matrices"] < 0.2
    assert report["coverage"]["left_dense"][0]["reason"] == "not prunable"
    warning = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warning) == 1 and ("mlp.w_in" in warning[0] or "mlp.w_out" in warning[0])
