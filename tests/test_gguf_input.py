"""GGUF input: dequantised tensor by tensor into the run dtype, equal to transformers' whole-file loader,
and streamed (through the cache folder) to the same output as the in-memory run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import llmprune
from llmprune.io import gguf_reading
from llmprune.io.loading import convert_gguf, load_causal_lm
from tests.conftest import random_calibration
from tests.gguf_helpers import write_tiny_gguf

REPORT = "llmprune_report.json"


def _reference(gguf_file: Path) -> dict[str, torch.Tensor]:
    """transformers' own GGUF loader (dequantises the whole file in float32): the independent reference."""
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    return model.state_dict()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # llama: transformers permutes q/k rows back
def test_tensor_by_tensor_dequantisation_equals_transformers(tmp_path, arch, monkeypatch):
    source = write_tiny_gguf(tmp_path / f"{arch}.gguf", arch)
    expected = _reference(source)
    monkeypatch.setattr(gguf_reading, "DEQUANT_ROWS", 5)  # chunks that do not divide the rows
    for dtype in (torch.float32, torch.bfloat16):
        folder = convert_gguf(source, tmp_path / f"out-{dtype}", dtype)
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).state_dict()
        assert set(loaded) == set(expected)
        for name, tensor in expected.items():
            assert torch.equal(loaded[name], tensor.to(dtype)), name
    header = json.loads((folder / "model.safetensors").read_bytes()[8:][: int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")])
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {"BF16"}


def test_shards_and_no_float32_model_copy(tmp_path, monkeypatch):
    """Small shards give an index like save_pretrained's; transformers' whole-file float32 loader is never used."""
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    source = write_tiny_gguf(tmp_path / "q.gguf")
    expected = _reference(source)
    real = hf_gguf.load_gguf_checkpoint

    def metadata_only(path, return_tensors=False, **kwargs):
        assert not return_tensors, "the whole-file float32 dequantisation was called"
        return real(path, return_tensors=False, **kwargs)

    monkeypatch.setattr(hf_gguf, "load_gguf_checkpoint", metadata_only)
    monkeypatch.setattr(gguf_reading, "SHARD_BYTES", 40_000)
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    model, _, path = load_causal_lm(str(source), dtype="bfloat16", device="cpu")
    folder = Path(path)
    assert folder.name.endswith("-bfloat16") and folder.parent == tmp_path / "cache" / "models"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert model.dtype == torch.bfloat16
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temporary files left in the cache"


def test_streaming_a_gguf_input_equals_the_in_memory_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    source = write_tiny_gguf(tmp_path / "q.gguf")
    calibration = random_calibration(vocab=258)
    options = dict(method="wanda", sparsity=0.5, calibration_ids=calibration, progress=False, device="cpu")
    model, tokenizer = llmprune.load_model(str(source), device="cpu")
    expected = llmprune.prune(model, tokenizer, **options)
    llmprune.save_pretrained(model, tokenizer, tmp_path / "memory", expected)
    report = llmprune.prune_folder(str(source), tmp_path / "stream", **options)
    assert report["layers"] == expected["layers"] and report["total_sparsity"] == pytest.approx(0.5, abs=0.01)
    memory = llmprune.load_model(str(tmp_path / "memory"), device="cpu")[0].state_dict()
    streamed = llmprune.load_model(str(tmp_path / "stream"), device="cpu")[0].state_dict()
    assert set(memory) == set(streamed)
    for name in memory:
        assert torch.equal(memory[name], streamed[name]), name


def test_a_gguf_model_too_large_for_memory_streams_by_default(tmp_path, monkeypatch, capsys):
    import psutil

    from llmprune.api import run_prune
    from llmprune.io import streaming
    from llmprune.options import RunOptions

    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    source = write_tiny_gguf(tmp_path / "q.gguf")
    assert not streaming.should_stream(str(source), "bfloat16", "cpu")
    folder = tmp_path / "cache" / "models" / f"gguf-q-{source.stat().st_size}-bfloat16"
    needed = streaming.header_bytes_in_memory(folder, torch.bfloat16)
    fake = psutil.virtual_memory()._replace(available=needed)  # the model would take more than 0.7 of it
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake)
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("def f(x):\n    return x + 1\n" * 200)
    report = run_prune(RunOptions(model=str(source), method="wanda", sparsity=0.5, calibration=str(calibration), nsamples=2,
                                  seqlen=16, dtype="bfloat16", progress=False, device="cpu", output=str(tmp_path / "out")))
    assert "streaming it block by block" in capsys.readouterr().out
    assert report["total_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert llmprune.load_model(str(tmp_path / "out"), device="cpu")[0].state_dict().keys() == _reference(source).keys()
