"""GenEval-style text alignment on ``shapes`` val captions: a trained caption model next to its references.

    .venv/bin/python experiments/t2i/measure_shapes.py --run runs/demo-shapes-t2i/nar \
        --tokens runs/demo-shapes-t2i/tokens --data runs/demo-shapes-t2i/data/shapes --num 300 --cfg 1 4

Rows (each scored by :class:`nar.metrics.GenEvalShapes` on the same first ``--num`` val captions):
- ``ground_truth``: the val renders themselves (the detector's ceiling);
- ``tokenizer_recon``: the renders through the tokenizer (decode(encode(x)): the ceiling of any generator
  that uses this tokenizer);
- ``random_tokens``: uniformly random codes, decoded (the floor);
- ``model_cfg<s>``: the run's EMA weights, frontier decoding with CFG scale ``s`` against the null caption.
Writes ``<run>/text_alignment.json`` and prints a table (overall and per family).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch


def score(images: torch.Tensor, specs: list[dict]) -> dict[str, float]:
    from nar.metrics import GenEvalShapes

    metric = GenEvalShapes()
    metric.update(images, specs)
    return {k: float(v) for k, v in metric.compute().items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (checkpoints/last.ckpt, config.yaml)")
    p.add_argument("--tokens", required=True, help="token shards with capfeat/capmask (val split)")
    p.add_argument("--data", required=True, help="shapes pairs folder (val renders)")
    p.add_argument("--num", type=int, default=300)
    p.add_argument("--cfg", type=float, nargs="+", default=[4.0])
    p.add_argument("--temperature", type=float, default=None, help="default: the run's sampling.temperature")
    p.add_argument("--top-k", type=int, default=None, help="default: the run's sampling.top_k")
    p.add_argument("--out", default=None, help="JSON file (default <run>/text_alignment.json)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from nar.config import from_dict
    from nar.data.datamodules import datamodule_for
    from nar.metrics.sources import iter_records
    from nar.model.io import load_generator_and_run_config
    from nar.runs import TrainConfig
    from nar.sampling import make_sampler
    from nar.shapes import parse_prompt
    from nar.tokenizers import load_tokenizer

    run = Path(args.run)
    model, stored = load_generator_and_run_config(run / "checkpoints" / "last.ckpt")
    cfg = from_dict(TrainConfig, stored)
    knobs = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k)) if v is not None}
    cfg = replace(cfg, sampling=replace(cfg.sampling, **knobs))
    tokenizer = load_tokenizer(cfg.tokenizer.path, config=cfg.tokenizer.config or None)

    # The first --num val samples: tokens, caption features, captions (token shards keep the source order).
    dm = datamodule_for(args.tokens, caption_features=True, num_workers=0, batch_size=args.batch_size,
                        eval_batch_size=args.batch_size)
    toks, feats, masks, captions = [], [], [], []
    for batch in dm.val_dataloader():
        toks.append(batch["tokens"])
        feats.append(batch["capfeat"])
        masks.append(batch["capmask"])
        captions += list(batch["caption"])
        if len(captions) >= args.num:
            break
    n = min(args.num, len(captions))
    toks, feats, masks, captions = torch.cat(toks)[:n], torch.cat(feats)[:n], torch.cat(masks)[:n], captions[:n]
    specs = [parse_prompt(c) for c in captions]
    bs = args.batch_size
    results: dict[str, dict[str, float]] = {}

    renders = [r for _, r in zip(range(n), iter_records(Path(args.data), "val", n))]
    results["ground_truth"] = score(torch.stack([torch.from_numpy(r.pixels.copy()).permute(2, 0, 1) for r in renders]),
                                    [r.spec for r in renders])

    def decode(codes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([tokenizer.decode(c).float().clamp(-1, 1) for c in codes.split(bs)])

    results["tokenizer_recon"] = score(decode(toks), specs)
    gen = torch.Generator().manual_seed(args.seed)
    random_codes = torch.randint(0, tokenizer.codebook_size, toks.shape, generator=gen)
    results["random_tokens"] = score(decode(random_codes), specs)

    timings = {}
    for scale in args.cfg:
        sampling = replace(cfg.sampling, cfg_scale=scale)
        start = time.perf_counter()
        samples = []
        for c, first in enumerate(range(0, n, bs)):
            cond, mask = feats[first:first + bs], masks[first:first + bs]
            sampler = make_sampler(model, cond.shape[0], sampling, cond_mask=mask)
            with torch.no_grad():
                samples.append(sampler(cond, generator=torch.Generator().manual_seed(args.seed + c)))
        timings[f"model_cfg{scale:g}"] = time.perf_counter() - start
        results[f"model_cfg{scale:g}"] = score(decode(torch.cat(samples)), specs)

    families = sorted({k for r in results.values() for k in r if k != "geneval_overall"})
    header = f"{'':18s} {'overall':>8s} " + " ".join(f"{f[8:]:>13s}" for f in families)
    print(f"GenEval-style text alignment on the first {n} shapes val captions")
    print(header)
    for name, r in results.items():
        print(f"{name:18s} {r['geneval_overall']:8.3f} " + " ".join(f"{r.get(f, float('nan')):13.3f}" for f in families))
    out = Path(args.out) if args.out else run / "text_alignment.json"
    out.write_text(json.dumps({"num": n, "checkpoint": str(run / "checkpoints" / "last.ckpt"),
                               "sampling": {k: v for k, v in vars(cfg.sampling).items() if k != "cfg_scale"},
                               "results": results, "sampling_seconds": timings}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
