"""Streaming mode: the same output files as the in-memory mode, byte for byte; atomic under a kill; clear refusals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import llmprune
from llmprune.api import run_prune
from llmprune.engine import lifecycle
from llmprune.io import streaming
from llmprune.options import RunOptions
from llmprune.errors import LLMPruneError
from tests.conftest import random_calibration, tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
REPORT = "llmprune_report.json"


def _model_folder(tmp_path: Path, family: str, shard: str | None = None, tie: bool | None = None) -> Path:
    folder = tmp_path / f"in-{family}"
    model = tiny_model(family)
    if tie is not None:
        model.config.tie_word_embeddings = tie
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != REPORT}


def _in_memory(source: Path, output: Path, calibration, **options) -> dict:
    model, tokenizer = llmprune.load_model(str(source), device="cpu")
    report = llmprune.prune(model, tokenizer, calibration_ids=calibration, progress=False, device="cpu", **options)
    llmprune.save_pretrained(model, tokenizer, output, report)
    return report


CASES = [
    # family, input shard size, options; GPT-2 and OPT tie lm_head to the embeddings, GPT-2 uses Conv1D.
    ("llama", None, dict(method="wanda", sparsity=0.5)),
    ("gpt2", "60KB", dict(method="sparsegpt", sparsity=0.5)),
    ("opt", None, dict(method="wanda", sparsity=0.6, owl=True)),
    ("llama", "40KB", dict(method="ria", pattern="2:4")),
]


@pytest.mark.parametrize("family,shard,options", CASES, ids=[f"{c[0]}-{c[2]['method']}" for c in CASES])
def test_streaming_writes_the_same_files(tmp_path, family, shard, options):
    source = _model_folder(tmp_path, family, shard)
    calibration = random_calibration()
    expected = _in_memory(source, tmp_path / "memory", calibration, **options)
    report = llmprune.prune_folder(str(source), tmp_path / "stream", calibration_ids=calibration, progress=False, device="cpu", **options)
    memory_files, stream_files = _files(tmp_path / "memory"), _files(tmp_path / "stream")
    assert sorted(memory_files) == sorted(stream_files)
    for name in memory_files:
        assert memory_files[name] == stream_files[name], name
    assert report["layers"] == expected["layers"]
    assert report["total_sparsity"] == expected["total_sparsity"]
    assert report.get("owl") == expected.get("owl")
    assert (tmp_path / "stream" / REPORT).is_file()


def test_sharded_output_matches_save_pretrained(tmp_path, monkeypatch):
    source = _model_folder(tmp_path, "llama", tie=True)
    calibration = random_calibration()
    model, tokenizer = llmprune.load_model(str(source), device="cpu")
    llmprune.prune(model, tokenizer, method="wanda", sparsity=0.5, calibration_ids=calibration, progress=False, device="cpu")
    model.save_pretrained(tmp_path / "memory", max_shard_size="50KB")
    tokenizer.save_pretrained(tmp_path / "memory")
    monkeypatch.setattr(streaming, "MAX_SHARD_SIZE", "50KB")
    llmprune.prune_folder(str(source), tmp_path / "stream", method="wanda", sparsity=0.5, calibration_ids=calibration, progress=False, device="cpu")
    memory_files, stream_files = _files(tmp_path / "memory"), _files(tmp_path / "stream")
    assert "model.safetensors.index.json" in memory_files and len([n for n in memory_files if n.startswith("model-")]) > 2
    assert memory_files == stream_files


def test_streaming_never_holds_the_whole_model(tmp_path, monkeypatch):
    source = _model_folder(tmp_path, "llama")
    live_blocks = []
    original = lifecycle.prune_block

    def counting(block, *args, **kwargs):
        model_blocks = counting.blocks
        live_blocks.append(sum(next(b.parameters()).device.type != "meta" for b in model_blocks))
        return original(block, *args, **kwargs)

    def skeleton(folder, dtype):
        model = build(folder, dtype)
        counting.blocks = llmprune.anatomy.find_blocks(model)[1]
        return model

    build = streaming.build_skeleton
    monkeypatch.setattr(streaming, "build_skeleton", skeleton)
    monkeypatch.setattr(lifecycle, "prune_block", counting)
    llmprune.prune_folder(str(source), tmp_path / "out", sparsity=0.5, calibration_ids=random_calibration(), progress=False, device="cpu")
    assert live_blocks == [1, 1]  # one block in memory at a time


def test_read_tensors_are_private_maps_of_the_file(tmp_path):
    source = _model_folder(tmp_path, "llama")
    checkpoint = streaming.Checkpoint(source)
    key = next(k for k in checkpoint.file_of if k.endswith("mlp.down_proj.weight"))
    before = (source / checkpoint.file_of[key]).read_bytes()
    tensor = checkpoint.read([key])[key]
    with safe_open(source / checkpoint.file_of[key], framework="pt") as handle:
        assert torch.equal(tensor, handle.get_tensor(key))
    tensor.zero_()  # pruning writes in place: the copy is private, the input file stays as it was
    assert (source / checkpoint.file_of[key]).read_bytes() == before


@pytest.mark.parametrize("tie", [False, True])
def test_tensors_outside_the_blocks_are_copied_not_loaded(tmp_path, monkeypatch, tie):
    """The embedding table and the head of a large vocabulary are the biggest tensors of a small
    model: written byte for byte from the input, the head is never read into memory."""
    source = _model_folder(tmp_path, "llama", tie=tie)
    loaded, copied = [], []
    load, copy = streaming.TensorPlaces.load, streaming.ShardWriter.copy_bytes
    monkeypatch.setattr(streaming.TensorPlaces, "load", lambda self, checkpoint, names: (loaded.extend(names), load(self, checkpoint, names))[1])
    monkeypatch.setattr(streaming.ShardWriter, "copy_bytes", lambda self, name, *a, **k: (copied.append(name), copy(self, name, *a, **k))[1])
    llmprune.prune_folder(str(source), tmp_path / "out", sparsity=0.5, calibration_ids=random_calibration(), progress=False, device="cpu")
    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as handle:
        outside = {key for key in handle.keys() if not key.startswith("model.layers.")}
    assert "model.embed_tokens.weight" in outside and sorted(copied) == sorted(outside)
    assert "lm_head.weight" not in loaded
    _in_memory(source, tmp_path / "memory", random_calibration(), sparsity=0.5)
    assert _files(tmp_path / "out") == _files(tmp_path / "memory")


KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    import torch
    import llmprune
    from llmprune.engine import lifecycle
    original = lifecycle.prune_block
    def slow(*args, **kwargs):
        result = original(*args, **kwargs)
        print("block pruned", flush=True)
        time.sleep(120)
        return result
    lifecycle.prune_block = slow
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    llmprune.prune_folder(sys.argv[1], sys.argv[2], sparsity=0.5, calibration_ids=calibration, progress=False, device="cpu")
    """
)


def test_killed_runs_leave_no_output_and_a_rerun_succeeds(tmp_path):
    source = _model_folder(tmp_path, "llama")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # A hard kill (SIGKILL: nothing runs) and a polite stop (SIGTERM), side by side to share the start-up time.
    signals = {"killed": signal.SIGKILL, "stopped": signal.SIGTERM}
    processes = {
        name: subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(source), str(tmp_path / name)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        for name in signals
    }
    try:
        for name, process in processes.items():
            line = process.stdout.readline()  # waits until the first block is pruned and written
            assert line.strip() == "block pruned", process.stderr.read()
            assert any(p.name.startswith(f".{name}.tmp-") for p in tmp_path.iterdir())  # it was writing
            process.send_signal(signals[name])
        for process in processes.values():
            process.wait(timeout=60)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    assert not (tmp_path / "killed").exists() and not (tmp_path / "stopped").exists()
    assert not any(p.name.startswith(".stopped.tmp-") for p in tmp_path.iterdir())  # a polite stop cleans up after itself
    assert any(p.name.startswith(".killed.tmp-") for p in tmp_path.iterdir())  # a hard kill cannot...
    output = tmp_path / "killed"
    report = llmprune.prune_folder(str(source), output, sparsity=0.5, calibration_ids=random_calibration(), progress=False, device="cpu")
    assert report["total_sparsity"] == pytest.approx(0.5)
    assert not any(p.name.startswith(".killed.tmp-") for p in tmp_path.iterdir())  # ...so the re-run removes its folder
    reloaded = llmprune.load_model(str(output), device="cpu")[0]
    assert float((reloaded.model.layers[1].mlp.down_proj.weight == 0).float().mean()) == pytest.approx(0.5)


def test_pickled_weights_and_gguf_are_refused(tmp_path):
    source = _model_folder(tmp_path, "llama")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((source / name).read_bytes())
    torch.save(tiny_model("llama").state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(LLMPruneError, match=r"\.bin"):
        llmprune.prune_folder(str(pickled), tmp_path / "o1", sparsity=0.5, calibration_ids=random_calibration(), progress=False)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(LLMPruneError, match="GGUF"):
        llmprune.prune_folder(str(gguf), tmp_path / "o2", sparsity=0.5, calibration_ids=random_calibration(), progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_stream_option_of_the_command(tmp_path, calibration_text):
    source = _model_folder(tmp_path, "llama")
    base = dict(model=str(source), method="wanda", sparsity=0.5, calibration=str(calibration_text), nsamples=2, seqlen=16, progress=False, device="cpu")
    report = run_prune(RunOptions(**base, stream=True, output=str(tmp_path / "streamed")))
    assert "streaming" in report and (tmp_path / "streamed" / "model.safetensors").is_file()
    run_prune(RunOptions(**base, output=str(tmp_path / "memory")))
    assert _files(tmp_path / "streamed") == _files(tmp_path / "memory")
    with pytest.raises(LLMPruneError, match="--output"):
        run_prune(RunOptions(**base, stream=True))
    with pytest.raises(LLMPruneError, match="whole model in memory"):
        run_prune(RunOptions(**base, stream=True, eval_ppl=True, output=str(tmp_path / "x")))


def test_the_tokenizer_is_let_go_before_the_blocks(tmp_path, monkeypatch, calibration_text):
    """A 150k-token tokenizer is about 130 MiB: a streamed run tokenises its calibration text first and
    holds no tokenizer while it prunes; the output's tokenizer files are still the in-memory run's."""
    import weakref

    source = _model_folder(tmp_path, "llama")
    tokenizers, alive_at_blocks = [], []
    release, prune_block = streaming.StreamedModel.release_tokenizer, lifecycle.prune_block

    def recording_release(self):
        tokenizers.append(weakref.ref(self.tokenizer))
        release(self)

    def checking(*args, **kwargs):
        alive_at_blocks.append(any(ref() is not None for ref in tokenizers))
        return prune_block(*args, **kwargs)

    monkeypatch.setattr(streaming.StreamedModel, "release_tokenizer", recording_release)
    monkeypatch.setattr(lifecycle, "prune_block", checking)
    base = dict(model=str(source), method="wanda", sparsity=0.5, calibration=str(calibration_text), nsamples=2, seqlen=16,
                progress=False, device="cpu")
    report = run_prune(RunOptions(**base, stream=True, output=str(tmp_path / "streamed")))
    assert len(tokenizers) == 1 and alive_at_blocks == [False, False]
    assert report["calibration"]["source"] == str(calibration_text)  # the text it was tokenised from
    memory = run_prune(RunOptions(**base, output=str(tmp_path / "memory")))
    assert memory["calibration"] == report["calibration"]
    assert _files(tmp_path / "streamed") == _files(tmp_path / "memory")


def test_models_too_large_for_memory_are_streamed_automatically(tmp_path, monkeypatch, calibration_text):
    import psutil

    source = _model_folder(tmp_path, "llama")
    assert not streaming.should_stream(str(source), None, "cpu")
    needed = streaming.header_bytes_in_memory(source, torch.float32)
    assert needed == sum(p.numel() * 4 for p in tiny_model("llama").parameters())
    fake = psutil.virtual_memory()._replace(available=needed)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake)
    assert streaming.should_stream(str(source), None, "cpu")
    report = run_prune(RunOptions(model=str(source), sparsity=0.5, calibration=str(calibration_text), nsamples=2, seqlen=16,
                                   progress=False, device="cpu", output=str(tmp_path / "auto")))
    assert "streaming" in report
