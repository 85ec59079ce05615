"""Reference outputs of the folders llmprune saves for tiny random models: the yardstick for "no change in results".

`tests/data/reference_outputs.json` holds, for every case, what is checked on any CPU, plus exact hashes
of the saved weights for each CPU family they were written on. `python -m tests.reference_outputs`
compares the current code with it; `--write` rewrites the whole reference from the current code;
`--add-hashes` adds this CPU family's exact hashes once the current code passes the tolerant checks.

Why not a hash alone: SparseGPT's Hessian products, Cholesky factors and column sweep go through float
kernels that MKL and ATen choose by instruction set, so their last bits differ between CPUs; a near-tie
in the saliency then flips, and the flip changes every later column of that row and, through the
activations, every later block. Measured between AVX-512 and AVX2 kernels on one machine: up to 15.6% of
one tensor's mask differs (phi3, 2:4), so neither masks nor weights can be compared one by one. What a
near-tie flip cannot change is what the method minimises: the output error of each pruned layer.

Checked on every CPU, exactly:
- the tensor names, shapes, dtypes and the number of non-zeros of every tensor;
- magnitude, Wanda and RIA only zero weights: every saved non-zero equals the dense weight bit for bit,
  and every tensor that no method touches (embeddings, norms, biases) is the dense one.
Checked on every CPU, within a tolerance:
- each pruned layer's relative output error ||X (W - W_pruned)^T|| / ||X W^T|| on the calibration tokens
  (X: the layer's inputs in the pruned model): within TENSOR_RTOL of the reference, their mean within
  MEAN_RTOL; and the damage ||logits_pruned - logits_dense|| / ||logits_dense - their mean|| on held-out
  tokens within DAMAGE_RTOL. The tolerances are 2.5-3.5x the largest spread measured between AVX-512 and
  AVX2 kernels over the 30 SparseGPT cases (2.3e-2 for one layer, 2.9e-3 for the mean, 1.2e-2 for the
  damage); the smallest effect of a changed method measured (damping 0.01 -> 0.05, saliency w^2/d
  instead of w^2/d^2, half the error feedback, Wanda with ||X||^2) was 8e-2 on some layer.
Checked exactly where this CPU family wrote hashes: the sha256 of every saved weight file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch
import transformers

REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "reference_outputs.json"
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "opt", "gpt2", "gpt_neox")
METHODS = ("magnitude", "wanda", "sparsegpt", "ria")
ZEROING_METHODS = ("magnitude", "wanda", "ria")  # keep the dense values of the weights they keep
TENSOR_RTOL, MEAN_RTOL, DAMAGE_RTOL = 0.06, 0.01, 0.03
PRUNED_SHARE = 0.2  # a matrix with more zeros than this was pruned (random dense weights have none)


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


def cpu_family() -> str:
    """What decides which float kernels run: vendor, vector extensions, the kernel choice torch and MKL
    were told to make, and the library versions. Machines with equal strings give equal bits."""
    flags, vendor = set(), platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id":
                vendor = value.strip()
            elif key.strip() == "flags":
                flags = {flag for flag in value.split() if flag.startswith(("avx", "amx", "fma", "sse4"))}
                break
    except OSError:
        pass
    kernels = ",".join(f"{name}={os.environ[name]}" for name in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                                                  "ONEDNN_MAX_CPU_ISA", "MKL_CBWR") if name in os.environ)
    flags_digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    return (f"{vendor}/{torch.backends.cpu.get_cpu_capability()}/flags-{flags_digest}/{kernels or 'default'}"
            f"/torch-{torch.__version__}/transformers-{transformers.__version__}")


# ------------------------------------------------------------------------------------- what is compared

def _load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _pruned_modules(model) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules()
            if not isinstance(module, torch.nn.Embedding) and isinstance(getattr(module, "weight", None), torch.Tensor)
            and module.weight.dim() == 2 and float((module.weight == 0).float().mean()) > PRUNED_SHARE}


def output_errors(dense_dir: Path, pruned_dir: Path, calibration: torch.Tensor, held_out: torch.Tensor) -> tuple[dict[str, float], float]:
    """Each pruned layer's relative output error on its inputs in the pruned model, and the model's damage."""
    def load(folder):
        return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    dense, pruned = load(dense_dir), load(pruned_dir)
    dense_modules = dict(dense.named_modules())
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name):
        def hook(module, args, output):
            inputs[name] = args[0].detach().reshape(-1, args[0].shape[-1])
        return hook

    modules = _pruned_modules(pruned)
    hooks = [module.register_forward_hook(keep_input(name)) for name, module in modules.items()]
    errors = {}
    with torch.no_grad():
        pruned(calibration)
        for hook in hooks:
            hook.remove()
        for name, module in modules.items():
            kept, full = module.weight, dense_modules[name].weight
            if isinstance(module, transformers.pytorch_utils.Conv1D):  # stored (inputs, outputs)
                kept, full = kept.t(), full.t()
            x = inputs[name]
            errors[name] = float((x @ (full - kept).t()).norm() / (x @ full.t()).norm())
        dense_logits, pruned_logits = dense(held_out).logits, pruned(held_out).logits
        centred = dense_logits - dense_logits.mean(dim=-1, keepdim=True)
        damage = float((pruned_logits - dense_logits).norm() / centred.norm())
    return errors, damage


def describe(dense_dir: Path, pruned_dir: Path) -> dict:
    """What a saved case is compared by (see the module docstring)."""
    from tests.conftest import random_calibration

    tensors = _load_tensors(pruned_dir)
    errors, damage = output_errors(dense_dir, pruned_dir, random_calibration(nsamples=4, seqlen=32),
                                   random_calibration(nsamples=2, seqlen=32, seed=1))
    return {
        "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "nonzero": int(torch.count_nonzero(t))}
                    for name, t in sorted(tensors.items())},
        "output_errors": errors,
        "damage": damage,
        "weights_sha256": weights_hash(pruned_dir),
    }


def _relative(got: float, want: float) -> float:
    return abs(got - want) / max(abs(want), 1e-12)


def compare(reference: dict, actual: dict, method: str, dense: dict[str, torch.Tensor], saved: dict[str, torch.Tensor],
            exact_hash: str | None = None) -> list[str]:
    """The differences that matter, as sentences; empty when the run reproduces the reference."""
    if exact_hash is not None and actual["weights_sha256"] != exact_hash:
        problems = [f"saved weights differ from this CPU family's exact hash"]
    else:
        problems = []
    if sorted(reference["tensors"]) != sorted(actual["tensors"]):
        return problems + [f"tensor names differ: {sorted(set(reference['tensors']) ^ set(actual['tensors']))}"]
    for name, want in reference["tensors"].items():
        got = actual["tensors"][name]
        problems += [f"{name}: {key} {got[key]} != reference {want[key]}" for key in want if got[key] != want[key]]
    pruned = set(reference["output_errors"])
    for name, tensor in saved.items():
        layer = name.removesuffix(".weight")
        if layer in pruned and method in ZEROING_METHODS:
            kept = tensor != 0
            if not torch.equal(tensor[kept], dense[name][kept]):
                problems.append(f"{name}: a kept weight is not the dense value ({method} only zeroes weights)")
        elif layer not in pruned and name in dense and not torch.equal(tensor, dense[name]):
            problems.append(f"{name}: changed, but it is not a pruned layer")
    if sorted(actual["output_errors"]) != sorted(pruned):
        return problems + [f"pruned layers differ: {sorted(set(actual['output_errors']) ^ pruned)}"]
    worst = max(pruned, key=lambda layer: _relative(actual["output_errors"][layer], reference["output_errors"][layer]))
    if _relative(actual["output_errors"][worst], reference["output_errors"][worst]) > TENSOR_RTOL:
        problems.append(f"{worst}: output error {actual['output_errors'][worst]:.5f} against {reference['output_errors'][worst]:.5f} "
                        f"(allowed {TENSOR_RTOL:.0%} relative)")
    mean_got = sum(actual["output_errors"].values()) / len(pruned)
    mean_want = sum(reference["output_errors"].values()) / len(pruned)
    if _relative(mean_got, mean_want) > MEAN_RTOL:
        problems.append(f"mean output error {mean_got:.5f} against {mean_want:.5f} (allowed {MEAN_RTOL:.0%} relative)")
    if _relative(actual["damage"], reference["damage"]) > DAMAGE_RTOL:
        problems.append(f"damage {actual['damage']:.5f} against {reference['damage']:.5f} (allowed {DAMAGE_RTOL:.0%} relative)")
    return problems


# ---------------------------------------------------------------------------------------------- runs

def _source_folder(family: str, workdir: Path) -> Path:
    from tests.conftest import tiny_model, tiny_tokenizer

    source = workdir / f"in-{family}"
    if not source.is_dir():
        tiny_model(family).save_pretrained(source)
        tiny_tokenizer().save_pretrained(source)
    return source


def run_case(options: dict, workdir: Path) -> Path:
    """Prune one tiny model as the case says and save it; returns the output folder."""
    import llmprune
    from tests.conftest import random_calibration

    options = dict(options)
    family, stream = options.pop("family"), options.pop("stream", False)
    source = _source_folder(family, workdir)
    output = workdir / "out"
    calibration = random_calibration(nsamples=4, seqlen=32)
    if stream:
        llmprune.prune_folder(str(source), output, calibration_ids=calibration, progress=False, device="cpu",
                              overwrite=True, **options)
    else:
        model, tokenizer = llmprune.load_model(str(source), device="cpu")
        report = llmprune.prune(model, tokenizer, calibration_ids=calibration, progress=False, device="cpu", **options)
        llmprune.save_pretrained(model, tokenizer, output, report, overwrite=True)
    return output


def check_case(name: str, workdir: Path, reference: dict) -> tuple[list[str], dict]:
    """Run one case and compare it with the reference: (problems, what was measured)."""
    import shutil

    options = cases()[name]
    output = run_case(options, workdir)
    source = _source_folder(options["family"], workdir)
    try:
        actual = describe(source, output)
        exact = reference.get("exact", {}).get(cpu_family(), {}).get(name)
        problems = compare(reference["cases"][name], actual, options["method"], _load_tensors(source),
                           _load_tensors(output), exact)
    finally:
        shutil.rmtree(output)
    return problems, actual


def load_reference() -> dict:
    return json.loads(REFERENCE_FILE.read_text())


def _each_case(names: list[str]):
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            family_dir = Path(tmp) / cases()[name]["family"]
            family_dir.mkdir(exist_ok=True)
            yield name, family_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {REFERENCE_FILE.name} from the current code, with this CPU family's hashes")
    mode.add_argument("--add-hashes", action="store_true", help="add this CPU family's exact hashes (every case must pass the tolerant checks)")
    parser.add_argument("names", nargs="*", help="cases to compare (default: all)")
    args = parser.parse_args(argv)
    names = args.names or sorted(cases())
    if (args.write or args.add_hashes) and args.names:
        parser.error("--write and --add-hashes cover every case; give no names")
    if args.write:
        described = {}
        for name, workdir in _each_case(names):
            output = run_case(cases()[name], workdir)
            described[name] = describe(_source_folder(cases()[name]["family"], workdir), output)
        hashes = {name: entry.pop("weights_sha256") for name, entry in described.items()}
        reference = {"cases": described, "exact": {cpu_family(): hashes}}
        REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE_FILE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(described)} cases to {REFERENCE_FILE} (exact hashes for {cpu_family()})")
        return 0
    reference = load_reference()
    exact = cpu_family() in reference.get("exact", {})
    failed, hashes = [], {}
    for name, workdir in _each_case(names):
        problems, actual = check_case(name, workdir, reference)
        hashes[name] = actual["weights_sha256"]
        if problems:
            failed.append(name)
            print(f"{name}: " + "; ".join(problems[:3]))
    print(f"{len(names) - len(failed)} of {len(names)} cases match on {cpu_family()} "
          f"({'exact hashes and ' if exact else 'no exact hashes for this CPU family; '}tolerant checks)")
    if args.add_hashes and not failed:
        reference.setdefault("exact", {})[cpu_family()] = hashes
        REFERENCE_FILE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
        print(f"added exact hashes for {cpu_family()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
