"""What one decoding pass costs on this CPU, for NAR and for raster on the same trunk, and what that
means for their speed ratio.

Each pass (``decode_step`` + sampling) is timed on its own: one pass of every frontier width (raster:
every pass feeds one cell) at eight cache lengths, the measurements of both models in a shuffled order
over several rounds so that the machine's drift falls on both alike. Least squares then splits a pass into

    seconds = fixed + per_cell * T + per_key * S

with T the cells fed and S the cached keys attended. The profiler gives the matrix multiplications'
share of ``per_cell`` (the rest is attention, norms, rotary, sampling, copies). The last table gives
the NAR/raster ratio as measured on whole generations (``nar bench --rounds 5``), as the fit sums it
over both schedules, and two bounds from the fit: if every per-cell cost except the matrix
multiplications were free, and if all per-cell cost were free (NAR then pays only its fixed cost: one
more block and a second head than raster per pass, 31 passes instead of 256).

    .venv/bin/python benchmarks/cpu_pass_cost.py                      # the `make bench-cpu` trunk
    .venv/bin/python benchmarks/cpu_pass_cost.py --set dim=128 --out benchmarks/results/x.md
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from nar.model import NARConfig
from nar.sampling.bench import DTYPES, bench_sampling, parse_overrides, random_model, raster_baseline, speedup
from nar.sampling.logits import SamplingConfig, sample_tokens


def time_pass(model, state, i: int, kv: int, cond: torch.Tensor, reps: int) -> float:
    """Seconds of decoding pass ``i`` (its frontier) + sampling, attending to a cache prefix of ``kv`` keys."""
    plan = state.plans[i]
    T = len(plan.positions)
    state.plans[i] = replace(plan, slots=kv - T, kv_limit=kv)
    toks = torch.zeros(cond.shape[0], T, dtype=torch.long)

    def once():
        sample_tokens(model.decode_step(toks, i, state), SamplingConfig())

    try:
        for _ in range(3):
            once()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
        return float(np.median(times))  # interruptions by the rest of the machine skew a mean
    finally:
        state.plans[i] = plan


def matmul_seconds(model, state, i: int, kv: int, cond: torch.Tensor, reps: int) -> float:
    """Profiler self time of the matrix multiplications in one such pass."""
    with torch.profiler.profile() as prof:
        time_pass(model, state, i, kv, cond, reps)
    mm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::bmm", "aten::addmm"))
    return mm / 1e6 / (reps + 3)  # the three warm-up calls are profiled too


def fit(rows: list[tuple[int, int, float]], with_cells: bool) -> tuple[float, float, float]:
    """Least squares ``seconds = fixed + per_cell * T + per_key * S`` over ``(T, S, seconds)`` rows."""
    T, S, sec = (np.array(v, dtype=float) for v in zip(*rows))
    cols = [np.ones_like(S), T, S] if with_cells else [np.ones_like(S), S]
    coef = np.linalg.lstsq(np.stack(cols, 1), sec, rcond=None)[0]
    return (coef[0], coef[1], coef[2]) if with_cells else (coef[0], 0.0, coef[1])


def schedule(state) -> list[tuple[int, int]]:
    """(cells fed, keys attended) of every decoding pass after the prefill."""
    return [(len(p.positions), p.kv_limit) for p in state.plans[1:]]


def measured_speedup(cfg: NARConfig, batch: int, dtype: str) -> tuple[float, float, float, list]:
    """Whole generations with the fast sampler, NAR and raster alternating for 5 rounds (``nar bench``)."""
    rows = bench_sampling(cfg, [batch], SamplingConfig(), device="cpu", dtype=dtype, warmup=2, iters=2, rounds=5)
    by = {r.method: r for r in rows}
    return (*speedup(by["nar"], by["raster"]), [by["nar"].images_per_s, by["raster"].images_per_s])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-cpu")
    ap.add_argument("--set", nargs="+", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--reps", type=int, default=10, help="calls per measurement (their median is kept)")
    ap.add_argument("--rounds", type=int, default=3, help="shuffled rounds over every measurement (median kept)")
    ap.add_argument("--out", help="also write the report (markdown) here")
    args = ap.parse_args()

    cfg = NARConfig.from_name(args.preset, **parse_overrides(args.overrides))
    dev, dt = torch.device("cpu"), DTYPES[args.dtype]
    models = {"nar": random_model(cfg, dev, dt),
              "raster": random_model(raster_baseline(cfg), dev, dt)}
    cond = torch.zeros(args.batch, dtype=torch.long)
    L = cfg.seq_len
    states = {name: model.start_inference(args.batch) for name, model in models.items()}
    # one pass of each frontier width (raster: every pass feeds one cell), at each cache length
    widths = {}
    for name, state in states.items():
        for i, (T, _) in enumerate(schedule(state), start=1):
            widths.setdefault(name, {}).setdefault(T, i)
    shortest = cfg.num_cond_tokens + max(widths["nar"])  # the condition and the widest frontier
    prefixes = sorted({max(shortest, L * k // 8) for k in range(1, 9)})
    jobs = [(name, T, kv) for name in models for T in sorted(widths[name]) for kv in prefixes]
    # Jobs of both models in a shuffled order, several rounds: the machine's speed drifts within a
    # minute here, and the drift must fall on NAR and raster alike.
    rng = random.Random(0)
    times: dict[tuple, list[float]] = {job: [] for job in jobs}
    with torch.no_grad():
        for _ in range(args.rounds):
            for job in rng.sample(jobs, len(jobs)):
                name, T, kv = job
                times[job].append(time_pass(models[name], states[name], widths[name][T], kv, cond, args.reps))
        coefs, model_total = {}, {}
        for name, state in states.items():
            rows = [(T, kv, float(np.median(times[(n, T, kv)]))) for n, T, kv in jobs if n == name]
            coefs[name] = fixed, per_cell, per_key = fit(rows, with_cells=name == "nar")
            # the prefill counts as one more narrow pass
            model_total[name] = fixed + per_cell + sum(fixed + per_cell * T + per_key * S for T, S in schedule(state))
        passes = {name: len(state.plans) for name, state in states.items()}
        nar_widths = widths["nar"]
        narrowest, widest = min(nar_widths), max(nar_widths)
        mm = [matmul_seconds(models["nar"], states["nar"], nar_widths[w], L, cond, 10) for w in (narrowest, widest)]
        mm_per_cell = (mm[1] - mm[0]) / (widest - narrowest)
        nar_sched = schedule(states["nar"])

    mid, lo, hi, rate = measured_speedup(cfg, args.batch, args.dtype)
    a, per_cell, per_key = coefs["nar"]
    gemm_only = a + mm_per_cell + sum(a + mm_per_cell * T + per_key * S for T, S in nar_sched)
    no_cells = a + sum(a + per_key * S for _, S in nar_sched)
    ras = model_total["raster"]
    lines = [
        f"# Decoding-pass cost on {platform.processor() or 'cpu'} ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}",
        "",
        f"{' '.join([args.preset, *args.overrides])}: dim {cfg.dim}, {cfg.n_layer} layers, vocab {cfg.vocab_size}, "
        f"grid {cfg.grid}, batch {args.batch}, {args.dtype}, no CFG. Passes timed alone (median of {args.rounds} "
        f"shuffled rounds x {args.reps} calls) at each frontier width and cache prefixes {prefixes}; least-squares fit.",
        "",
        "| | fixed ms/pass | ms per frontier cell | of which matmul | us per cached key | passes |",
        "|---|---|---|---|---|---|",
        f"| NAR | {1e3 * a:.2f} | {1e3 * per_cell:.3f} | {1e3 * mm_per_cell:.3f} | {1e6 * per_key:.2f} "
        f"| {passes['nar']} |",
        f"| raster | {1e3 * coefs['raster'][0]:.2f} | (one cell a pass) | | {1e6 * coefs['raster'][2]:.2f} "
        f"| {passes['raster']} |",
        "",
        "| NAR/raster wall-clock ratio | |",
        "|---|---|",
        f"| measured: whole generations, fast sampler, 5 alternating rounds ({rate[0]:.1f} vs {rate[1]:.1f} img/s; "
        f"rounds {lo:.2f}-{hi:.2f}x) | {mid:.2f}x |",
        f"| the fit, summed over both schedules | {ras / model_total['nar']:.2f}x |",
        f"| the fit, if NAR's per-cell cost were its matmuls alone | {ras / gemm_only:.2f}x |",
        f"| the fit, if NAR's per-cell cost were zero | {ras / no_cells:.2f}x |",
        "",
        f"NAR's fixed cost per pass / raster's: {a / coefs['raster'][0]:.2f}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
