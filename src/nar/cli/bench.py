"""``nar bench`` — sampling speed of NAR vs the raster and PAR baselines (and the plain reference), as a table + JSON."""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import time
from dataclasses import asdict
from pathlib import Path

from nar.config import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark token generation (NAR vs raster vs PAR vs reference) and tokenizer "
                                     "decoding")
    p.add_argument("--preset", default="NAR-L", help="generator preset (NAR-B..NAR-XXL, bench-cpu, NAR-tiny)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override preset fields, e.g. --set dim=128 vocab_size=1024 (values parsed as YAML)")
    p.add_argument("--batch", type=int, nargs="+", default=[64])
    p.add_argument("--guidance", "--cfg", dest="guidance", type=float, default=2.0,
                   help="classifier-free guidance scale, 1 = off (default: %(default)s, the paper's benchmark setting)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--reference", action="store_true", help="also time the plain official-style decoder")
    p.add_argument("--schedules", nargs="+", default=["nar", "raster"], metavar="SCHEDULE",
                   help="methods to time on the preset's trunk, in this order: nar, raster, and PAR as par-<regions "
                        "per axis joined by x> (par-2x2: PAR-4x, par-4x4: PAR-16x, par-1x2x2 for video) "
                        "(default: %(default)s)")
    p.add_argument("--no-raster", action="store_true", help="skip the raster baseline (drops it from --schedules)")
    p.add_argument("--no-graph", action="store_true", help="run eagerly (no CUDA graph)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoding loop")
    p.add_argument("--variants", nargs="+", default=[], metavar="VARIANT",
                   help="extra NAR rows, each 'fast' or options joined by '+' from compile, autotune (compile with "
                        "max-autotune-no-cudagraphs), wavefront (two cohorts in flight, a steady stream), fp8 (block "
                        "weights in float8, Hopper GPUs), fp8kv (KV caches in float8), e.g. wavefront "
                        "wavefront+compile fp8+wavefront+compile fp8+fp8kv+wavefront+compile")
    p.add_argument("--decode-with", nargs="+", default=[], metavar="VARIANT",
                   help="tokens + pixels rows: these variants' samplers followed by the --tokenizer decoder (first "
                        "--decode-dtype, compiled with --decode-compile) in the same stream")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak for the %% of peak column (default: from the card's name for "
                        "H100/H200/A100/L40S/B200; none on a CPU)")
    p.add_argument("--attention", choices=["auto", "sdpa", "triton"], default="auto",
                   help="decode-pass attention: the small-query Triton kernel (auto: on a GPU with Triton) or SDPA")
    p.add_argument("--tokenizer-decode", action="store_true", help="also time the VQ decoder")
    p.add_argument("--decode-compile", action="store_true",
                   help="also time the VQ decoder compiled with torch.compile (tokenizer.decoder.compile())")
    p.add_argument("--decode-dtype", nargs="+", choices=["fp32", "bf16", "fp16"], default=["fp32"],
                   help="precisions to time the decoder in (fp32 is the official setting)")
    p.add_argument("--tokenizer", default="vq-16")
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=positive_int, default=3, help="timed calls per method and round")
    p.add_argument("--min-time", type=float, default=0.0, help="time each method for at least this many seconds")
    p.add_argument("--rounds", type=positive_int, default=1,
                   help="time the --schedules in alternation this many rounds (iters calls each); report the median "
                        "round and the round-by-round speed-ups of NAR over each other method with their range")
    p.add_argument("--out", default="runs/bench",
                   help="folder for the JSON and markdown results (recorded runs go to benchmarks/results/<card>-<date>/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from nar.errors import ConfigError
    from nar.model import NARConfig
    from nar.sampling.bench import (
        bench_sampling,
        bench_tokenizer_decode,
        build_decoder,
        parse_overrides,
        peak_tflops,
    )
    from nar.sampling.logits import SamplingConfig

    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; run `make bench-cpu` or pass --device cpu")
        return 2
    cfg = NARConfig.from_name(args.preset, **parse_overrides(args.overrides))  # a bad key or value: ConfigError
    sampling = SamplingConfig(cfg_scale=args.guidance, top_k=args.top_k)
    schedules = [s for s in args.schedules if not (args.no_raster and s == "raster")]
    # The named device's (cuda:1 is not GPU 0); plain "cuda" is the current device.
    device_name = (torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda")
                   else platform.processor() or "cpu")
    peak = args.peak_tflops or (peak_tflops(device_name) if args.device.startswith("cuda") else None)
    decoder = None
    if args.decode_with:
        decoder = build_decoder(args.tokenizer, cfg.grid, args.device, args.decode_dtype[0], args.decode_compile,
                                batch=min(args.batch))
    threads = torch.get_num_threads()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "".join("+" + re.sub(r"[^A-Za-z0-9_.]+", "", o.replace("=", "")) for o in args.overrides)
    stem = f"bench-{args.preset}{tag}-{args.device.split(':')[0]}-{args.dtype}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = "nar " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []))
    report = dict(preset=args.preset, overrides=args.overrides, config=asdict(cfg), grid=cfg.grid,
                  cfg_scale=args.guidance, dtype=args.dtype, device=args.device, device_name=device_name,
                  torch=torch.__version__, threads=threads, rounds=args.rounds, schedules=schedules,
                  variants=args.variants, decode_with=args.decode_with, peak_tflops=peak, command=command,
                  tokenizer=args.tokenizer if args.decode_with or args.tokenizer_decode else None)

    def write(rows: list, final: bool = False) -> str:
        """The table so far into ``<stem>.md`` and ``.json`` (after every row: a run cut short keeps its rows)."""
        text = _render(args, cfg, rows, schedules, device_name, threads, peak, torch.__version__)
        (out / f"{stem}.md").write_text(text + ("" if final else "\n\n(incomplete: the run is still going or was "
                                                                   "stopped)") + "\n")
        (out / f"{stem}.json").write_text(json.dumps({**report, "complete": final, "rows": [asdict(r) for r in rows]},
                                                     indent=2))
        return text

    rows = bench_sampling(cfg, args.batch, sampling, device=args.device, dtype=args.dtype, reference=args.reference,
                          cuda_graph=False if args.no_graph else None, compile=args.compile, warmup=args.warmup,
                          iters=args.iters, min_time=args.min_time, attention=args.attention, rounds=args.rounds,
                          schedules=schedules, variants=args.variants, decoder=decoder,
                          decode_variants=args.decode_with, peak=peak, on_row=write)
    if args.tokenizer_decode:
        for dt in args.decode_dtype:
            for compiled in (False, True) if args.decode_compile else (False,):
                rows.append(bench_tokenizer_decode(args.tokenizer, args.decode_batch, cfg.grid, device=args.device,
                                                   dtype=dt, warmup=args.warmup, iters=args.iters,
                                                   min_time=args.min_time, compile=compiled, peak=peak))
                write(rows)
    text = write(rows, final=True)
    print(text)
    print(f"\nwrote {out / stem}.{{json,md}}")
    headline = _ratios(rows, schedules, args.batch)[1]
    if headline:
        print(headline)
    return 0


def _ratios(rows: list, schedules: list[str], batches: list[int]) -> tuple[list[str], str | None]:
    from nar.sampling.bench import speedup

    ratios, headline = [], None
    for batch in batches:
        by = {r.method: r for r in rows if r.batch == batch}
        for other in (s for s in schedules if s != "nar" and s in by and "nar" in by):
            mid, lo, hi = speedup(by["nar"], by[other])
            spread = f" (rounds {lo:.2f}-{hi:.2f}x)" if hi > lo else ""
            ratios.append(f"batch {batch}: nar/{other} speed-up {mid:.2f}x{spread}")
            if other == "raster":
                headline = headline or f"nar/raster speed-up: {mid:.2f}x"
        for method in (m for m in by if m.startswith("nar+") and "nar" in by):
            mid, lo, hi = speedup(by[method], by["nar"])
            spread = f" (rounds {lo:.2f}-{hi:.2f}x)" if hi > lo else ""
            ratios.append(f"batch {batch}: {method} over nar: {mid:.2f}x{spread}")
        if "nar-reference" in by and "nar" in by:
            ratios.append(f"batch {batch}: fast/reference speed-up {speedup(by['nar'], by['nar-reference'])[0]:.2f}x")
    return ratios, headline


def _render(args: argparse.Namespace, cfg, rows: list, schedules: list[str], device_name: str, threads: int,
            peak: float | None, torch_version: str) -> str:
    preset = args.preset + "".join(f" {o}" for o in args.overrides)
    header = (f"preset {preset} grid {cfg.grid} | CFG {args.guidance} | {args.dtype} | {args.device} "
              f"({device_name}, torch {torch_version}, {threads} threads)")
    if peak:
        header += (f"\n% of peak: FLOPs per image (the tokens', CFG rows included; + the decoder's on decode rows) "
                   f"x images/s over {peak:.0f} TFLOP/s dense bf16")
    table = ["| method | batch | passes | images/s | tokens/s | s/batch | ms/pass | % of peak | peak GiB | execution |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = f"{r.peak_memory_gib:.2f}" if r.peak_memory_gib is not None else "-"
        frac = f"{100 * r.fraction_of_peak:.1f}" if r.fraction_of_peak is not None else "-"
        table.append(f"| {r.method} | {r.batch} | {r.forward_passes} | {r.images_per_s:.1f} | {r.tokens_per_s:.0f} "
                     f"| {r.seconds_per_batch:.4f} | {r.ms_per_pass:.2f} | {frac} | {mem} | {r.execution} |")
    ratios, _ = _ratios(rows, schedules, args.batch)
    return "\n".join([header, "", *table, "", *ratios])
