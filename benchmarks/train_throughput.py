"""Training throughput and MFU of a generator: images/s, tokens/s, model FLOP/s and their fraction of the device's
peak, for one device at a given per-device batch (the 8-GPU recipe's NAR-L is 32 = 256 / 8).

    python benchmarks/train_throughput.py --preset NAR-L --batch 32 --dtype bf16 --compile --device cuda
    python benchmarks/train_throughput.py --preset NAR-tiny --batch 8 --dtype fp32 --device cpu --steps 3   # smoke

One training step is the suite's: ``forward_train`` under autocast, cross-entropy of the mixed logits, backward,
global-norm clipping at 1.0, AdamW (fused on CUDA). Tokens are random (throughput does not depend on them).
FLOPs per sample are counted on the meta device (:mod:`nar.model.flops`); the peak is Lightning's table of dense
bf16/fp32 FLOP/s by device name (unknown devices, e.g. CPUs, get no MFU). Writes JSON + markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nar.model import NARConfig, NARModel
from nar.model.flops import training_flops_per_sample
from nar.sampling.bench import DTYPES, parse_overrides


def step_fn(model: NARModel, opt: torch.optim.Optimizer, tokens: torch.Tensor, labels: torch.Tensor,
            dtype: torch.dtype, forward) -> torch.Tensor:
    with torch.autocast(tokens.device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = forward(tokens, labels)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="NAR-L")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="NARConfig field overrides")
    p.add_argument("--batch", type=int, default=32, help="per-device batch (default: 32, the 8-GPU recipe's)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (the recipe does)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = NARConfig.from_name(args.preset, **parse_overrides(args.set))
    torch.manual_seed(0)
    model = NARModel(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=device.type == "cuda" or None)
    forward = torch.compile(model.forward_train) if args.compile else model.forward_train
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, cfg.num_cells), device=device)
    labels = torch.randint(0, cfg.num_classes, (args.batch,), device=device)
    dtype = DTYPES[args.dtype]
    for _ in range(args.warmup):
        step_fn(model, opt, tokens, labels, dtype, forward)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step_fn(model, opt, tokens, labels, dtype, forward)
    float(loss)  # wait for the last step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    flops = training_flops_per_sample(cfg) * args.batch / seconds
    from lightning.fabric.utilities.throughput import get_available_flops

    peak = get_available_flops(device, dtype) if device.type == "cuda" else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    row = {"preset": args.preset, "overrides": args.set, "device": name, "batch": args.batch, "dtype": args.dtype,
           "compile": args.compile, "seconds_per_step": seconds, "images_per_s": args.batch / seconds,
           "tokens_per_s": args.batch * cfg.num_cells / seconds, "model_tflops_per_s": flops / 1e12,
           "peak_tflops": peak / 1e12 if peak else None, "mfu": flops / peak if peak else None,
           "parameters": sum(t.numel() for t in model.parameters())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"train-{args.preset}-{name.replace(' ', '_')}-{args.dtype}-b{args.batch}{'-compiled' if args.compile else ''}"
    (out / f"{stem}.json").write_text(json.dumps(row, indent=1))
    mfu = f"{100 * row['mfu']:.1f} %" if row["mfu"] else "n/a (peak unknown)"
    text = (f"| preset | device | batch | dtype | compiled | images/s | tokens/s | model TFLOP/s | MFU |\n"
            f"|---|---|---|---|---|---|---|---|---|\n| {args.preset} | {name} | {args.batch} | {args.dtype} | "
            f"{args.compile} | {row['images_per_s']:.1f} | {row['tokens_per_s']:.0f} | {row['model_tflops_per_s']:.2f} | "
            f"{mfu} |\n")
    (out / f"{stem}.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
