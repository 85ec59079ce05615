"""One recipe on the results table's calibration and test windows, without the table's task scoring.

    OMP_NUM_THREADS=1 .venv/bin/python eval/check_recipe.py admm 0.5 '{"reconstruct": true, "reconstruct_norms": true}'

Prunes the bundled SmolLM2-135M (float32, one thread) with ``llmprune.prune`` on the same 32 x 512 Wikipedia
train windows as ``bench_results_table.py`` (seed 0), then prints one JSON line: the overrides, Wikipedia test
perplexity over the first 64 512-token windows, prune seconds and peak RSS from the prune report.
"""
from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    import torch

    import llmprune
    from llmprune.calibration import calibration_batch
    from llmprune.evaluate.perplexity import perplexity
    from llmprune.io.loading import load_causal_lm

    method, sparsity = argv[0], float(argv[1])
    overrides = json.loads(argv[2]) if len(argv) == 3 else {}
    torch.set_num_threads(1)
    model, tokenizer, _ = load_causal_lm("llama", dtype="float32", device="cpu")
    ids = calibration_batch(tokenizer, "wikipedia", 32, 512, 0)
    report = llmprune.prune(model, tokenizer, method=method, sparsity=sparsity, calibration_ids=ids, seed=0,
                            progress=False, **overrides)
    ppl = perplexity(model, tokenizer, source="wikipedia", split="test", seqlen=512, max_windows=64, progress=False).ppl
    print(json.dumps({"method": method, "sparsity": sparsity, "overrides": overrides, "ppl": ppl,
                      "prune_seconds": report["prune_seconds"], "peak_rss_mb": report["peak_rss_mb"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
