"""What float8 block weights or a float8 KV cache do to a generator's tokens: greedy agreement and the likelihood
of reference samples.

A bf16 model (random weights, heads drawn like the benchmark's) decodes the same labels as its candidate
(:func:`nar.sampling.precision.precision_report`): ``--what weights`` its :func:`nar.model.fp8.quantize_fp8`
copy, ``kv`` itself with float8 KV caches (both models then scored through their decoding passes), ``both``
the copy with float8 caches. Writes ``fp8-<what>-<preset>-*.json`` with the figures and the command under
``--out``.

    PYTHONPATH=src python3 benchmarks/fp8_agreement.py --preset NAR-L --samples 64 --device cuda --out benchmarks/results/<card>-<date>
    .venv/bin/python benchmarks/fp8_agreement.py --preset NAR-tiny --what kv --device cpu --out /tmp
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from nar.model import NARConfig
from nar.model.fp8 import quantize_fp8
from nar.sampling.bench import parse_overrides, random_model
from nar.sampling.logits import SamplingConfig
from nar.sampling.precision import precision_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="NAR-L")
    p.add_argument("--set", nargs="+", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--what", choices=["weights", "kv", "both"], default="weights",
                   help="float8 block weights, a float8 KV cache, or both")
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args(argv)
    # The arguments this call parsed (``argv`` when a driver passes them, else the process's own).
    command = shlex.join(["python3", "benchmarks/fp8_agreement.py", *(argv if argv is not None else sys.argv[1:])])
    cfg = NARConfig.from_name(args.preset, **parse_overrides(args.overrides))
    dev = torch.device(args.device)
    reference = random_model(cfg, dev, torch.bfloat16, args.seed)
    candidate, summary = reference, None
    if args.what != "kv":
        candidate = copy.deepcopy(reference)
        summary = quantize_fp8(candidate).as_dict()
    kv_dtype = torch.float8_e4m3fn if args.what != "weights" else None
    labels = torch.randint(0, cfg.num_classes, (args.samples,), generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    report = precision_report(reference, candidate, labels.to(dev), SamplingConfig(cfg_scale=args.guidance),
                              generator_seed=args.seed, candidate_kv_dtype=kv_dtype)
    report = {"preset": args.preset, "overrides": args.overrides, "cfg_scale": args.guidance, "samples": args.samples,
              "device_name": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "what": args.what, "fp8": summary,
              "kv_cache": "float8_e4m3fn, a float32 scale per row" if kv_dtype is not None else "bf16", **report,
              "seconds": time.perf_counter() - start,
              "command": command}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fp8-{args.what}-{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("fp8", "command")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
