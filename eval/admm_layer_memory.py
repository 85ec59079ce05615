"""Peak extra memory and CPU time of one method's prune step on one random rows x columns layer.

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 python eval/admm_layer_memory.py 2048 1024 0.7 admm [--block-fraction 0.093]

Prints the process's high-water mark (VmHWM, reset just before the call) above its resident size
before the call, in units of the layer's float32 size. A fixed mmap threshold makes glibc return
every freed tensor at once, so the mark counts live tensors rather than heap left-overs.
``--block-fraction`` sizes ADMM's row blocks as that fraction of the layer, as on a larger layer
(0.093 is what a 4096 x 11008 layer gets), so a small layer stands in for a large one.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmprune.methods import SparsityTarget, get_method  # noqa: E402
from llmprune.methods import admm  # noqa: E402


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=int)
    parser.add_argument("columns", type=int)
    parser.add_argument("target", help="a sparsity (0.7) or an N:M pattern (2:4)")
    parser.add_argument("method", default="admm")
    parser.add_argument("--block-fraction", type=float, default=None)
    args = parser.parse_args()
    if args.block_fraction:
        admm.ROW_BLOCK_ELEMENTS = int(args.block_fraction * args.rows * args.columns)
    method = get_method(args.method)
    target = SparsityTarget.parse(pattern=args.target) if ":" in args.target else SparsityTarget.parse(float(args.target))
    generator = torch.Generator().manual_seed(0)
    stats = method.new_statistics(args.columns, torch.device("cpu"))
    for _ in range(4):
        method.update_statistics(stats, torch.randn(args.columns, args.columns, generator=generator))
    weight = torch.randn(args.rows, args.columns, generator=generator)
    gc.collect()
    before = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    started = time.process_time()
    method.prune(weight, stats, target)
    seconds = time.process_time() - started
    peak = status_kb("VmHWM") - before
    layer_kb, hessian_kb = args.rows * args.columns * 4 / 1024, args.columns**2 * 4 / 1024
    print(f"{args.method} {args.rows}x{args.columns} {args.target}: extra peak {peak / 1024:.0f} MiB = "
          f"{peak / layer_kb:.1f} layer-size matrices (layer {layer_kb / 1024:.0f} MiB, H {hessian_kb / 1024:.0f} MiB; "
          f"{(peak - 2 * hessian_kb) / layer_kb:.1f} layer-size beyond 2 H-size), {seconds:.1f} s CPU")


if __name__ == "__main__":
    main()
