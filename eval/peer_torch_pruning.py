"""The peer: torch-pruning (PyPI ``torch-pruning``) removes the same share of MLP channels of the bundled
SmolLM2-135M, on the same calibration windows, and saves a folder that bench_shrink.py evaluates.

Run in torch-pruning's own environment (it is never a dependency of llmprune):

    python3 -m venv /tmp/tpvenv
    echo /path/to/llmprune/.venv/lib/python3.11/site-packages > /tmp/tpvenv/lib/python3.11/site-packages/main.pth
    /tmp/tpvenv/bin/pip install --no-deps torch-pruning      # reuses llmprune's pinned torch and transformers
    /tmp/tpvenv/bin/python eval/peer_torch_pruning.py --calibration calib.json --ratio 0.25 --importance taylor --output DIR

Only MLP intermediate channels are pruned (the groups rooted at every gate_proj), by the fraction that
removes --ratio of the decoder blocks' parameters, uniformly per block. ``taylor``: GroupTaylorImportance
from the gradients of the language-model loss on the calibration windows; ``magnitude``:
GroupMagnitudeImportance (L2). No re-fit afterwards (torch-pruning has none).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch_pruning as tp
import transformers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="model folder (default: the bundled SmolLM2 from llmprune's cache)")
    parser.add_argument("--calibration", required=True, help="JSON list of token-id windows")
    parser.add_argument("--ratio", type=float, required=True, help="fraction of the decoder blocks' parameters")
    parser.add_argument("--importance", choices=["taylor", "magnitude"], default="taylor")
    parser.add_argument("--batch", type=int, default=4, help="windows per backward pass (Taylor)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model
    if folder is None:
        from llmprune.io.loading import resolve_model_path

        folder = resolve_model_path("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model.config.use_cache = False
    ids = torch.tensor(json.loads(Path(args.calibration).read_text()))
    layers = model.model.layers
    block_params = sum(p.numel() for p in layers[0].parameters())
    mlp = layers[0].mlp
    channel_params = mlp.gate_proj.in_features * 2 + mlp.down_proj.out_features
    channel_ratio = args.ratio * block_params / (channel_params * mlp.gate_proj.out_features)
    started = time.perf_counter()
    importance = tp.importance.GroupTaylorImportance() if args.importance == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)
    ignored = [model.lm_head] + [m for layer in layers for m in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                                    layer.self_attn.v_proj, layer.self_attn.o_proj, layer.mlp.down_proj)]
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=ids[:1, :64], importance=importance, pruning_ratio=0.0,
        pruning_ratio_dict={layer.mlp.gate_proj: channel_ratio for layer in layers},
        ignored_layers=ignored, global_pruning=False, round_to=None,
    )
    if args.importance == "taylor":
        model.zero_grad()
        for start in range(0, len(ids), args.batch):
            batch = ids[start : start + args.batch]
            model(input_ids=batch, labels=batch).loss.backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    model.config.intermediate_size = layers[0].mlp.gate_proj.out_features
    assert all(layer.mlp.down_proj.in_features == model.config.intermediate_size for layer in layers), "non-uniform widths"
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    report = {"library": "torch-pruning", "version": tp.__version__, "importance": args.importance, "ratio": args.ratio,
              "channel_ratio": channel_ratio, "intermediate_size": model.config.intermediate_size, "seconds": round(seconds, 2)}
    (Path(args.output) / "peer_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
