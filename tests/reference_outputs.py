"""Hashes of the folders llmprune saves for tiny random models: the yardstick for "no change in results".

`tests/data/reference_hashes.json` was written by the code *before* the engine was rebuilt around one
block lifecycle (`python -m tests.reference_outputs --write`, at commit 3256c50); test_reference_outputs
recomputes every case with the current code and compares. The saved weights are hashed (config,
tokenizer files and the report, which holds timings, are not).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
import transformers

REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "reference_hashes.json"
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "opt", "gpt2", "gpt_neox")
METHODS = ("magnitude", "wanda", "sparsegpt", "ria")


def cases() -> dict[str, dict]:
    """name -> options of one run; every family x method x (50%, 2:4), OWL, chunked, and streaming runs."""
    table: dict[str, dict] = {}
    for family in FAMILIES:
        for method in METHODS:
            table[f"{family}-{method}-50"] = dict(family=family, method=method, sparsity=0.5)
            table[f"{family}-{method}-2:4"] = dict(family=family, method=method, pattern="2:4")
    for family in ("llama", "gpt2", "opt"):
        for method in ("wanda", "sparsegpt"):
            table[f"{family}-{method}-60-owl"] = dict(family=family, method=method, sparsity=0.6, owl=True)
            table[f"{family}-{method}-50-chunked"] = dict(family=family, method=method, sparsity=0.5, batch_size=2)
    for family in ("llama", "gpt2", "qwen3"):
        for method in METHODS:
            table[f"{family}-{method}-50-stream"] = dict(family=family, method=method, sparsity=0.5, stream=True)
        table[f"{family}-sparsegpt-2:4-stream"] = dict(family=family, method="sparsegpt", pattern="2:4", stream=True)
        table[f"{family}-wanda-60-owl-stream"] = dict(family=family, method="wanda", sparsity=0.6, owl=True, stream=True)
    return table


def _weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_case(options: dict, workdir: Path) -> str:
    """Prune one tiny model as the case says, save it, and hash the saved weights."""
    import llmprune
    from tests.conftest import random_calibration, tiny_model, tiny_tokenizer

    options = dict(options)
    family, stream = options.pop("family"), options.pop("stream", False)
    source = workdir / f"in-{family}"
    if not source.is_dir():
        tiny_model(family).save_pretrained(source)
        tiny_tokenizer().save_pretrained(source)
    output = workdir / "out"
    calibration = random_calibration(nsamples=4, seqlen=32)
    if stream:
        prune_from_folder(str(source), output, calibration, **options)
    else:
        model, tokenizer = llmprune.load_model(str(source), device="cpu")
        report = llmprune.prune(model, tokenizer, calibration_ids=calibration, progress=False, device="cpu", **options)
        llmprune.save_pretrained(model, tokenizer, output, report, overwrite=True)
    digest = _weights_hash(output)
    import shutil

    shutil.rmtree(output)
    return digest


def prune_from_folder(source: str, output: Path, calibration, **options) -> None:
    """A streaming run (never the whole model in memory) into ``output``."""
    import llmprune

    llmprune.prune_folder(source, output, calibration_ids=calibration, progress=False, device="cpu", overwrite=True, **options)


def compute_all() -> dict[str, str]:
    torch.set_num_threads(1)
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in cases().items():
            family_dir = Path(tmp) / options["family"]
            family_dir.mkdir(exist_ok=True)
            hashes[name] = run_case(options, family_dir)
    return hashes


def environment() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {REFERENCE_FILE.name} from the current code")
    args = parser.parse_args(argv)
    hashes = compute_all()
    if args.write:
        REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE_FILE.write_text(json.dumps({"environment": environment(), "hashes": hashes}, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(hashes)} hashes to {REFERENCE_FILE}")
        return 0
    reference = json.loads(REFERENCE_FILE.read_text())["hashes"]
    differ = sorted(name for name in hashes if reference.get(name) != hashes[name])
    print(f"{len(hashes) - len(differ)} of {len(hashes)} cases match" + (f"; differ: {', '.join(differ)}" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
