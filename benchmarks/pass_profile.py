"""Where the time of a wavefront period goes, kernel family by kernel family: the measurement issue 21 needs
next (a pass costs 2.2-3.3 us per fed row on an H200 where the blocks' matrix products need ~0.65 us at the
dense bf16 peak; what is the rest?).

One period of the wavefront sampler (two cohorts in flight, every pass of the schedule once per cohort) runs
warm, outside the CUDA graph, under ``torch.profiler``: the kernels are the ones the graph replays, only the
launch gaps differ. Its device time is split into families (matrix products, decode attention, sampling,
Inductor's fused kernels, norms, copies and cache writes, eager elementwise, other), each with its share and its
cost per fed row (a cell of one sample fed to the trunk, CFG rows counted), beside the time the period's
counted FLOPs take at the card's dense bf16 peak. The 25 costliest kernels follow. On a CPU the same tables
hold the aten operators' self CPU time (how the tests run it, on a tiny trunk).

    PYTHONPATH=src python3 benchmarks/pass_profile.py --preset NAR-L --batch 64 --device cuda --dtype bf16 --compile
    .venv/bin/python benchmarks/pass_profile.py --preset NAR-tiny --batch 2 --out /tmp/profile.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from nar.model import NARConfig
from nar.model.flops import sampling_flops_per_image
from nar.sampling.bench import DTYPES, parse_overrides, peak_tflops, random_model
from nar.sampling.logits import SamplingConfig
from nar.sampling.wavefront import WavefrontSampler

# First match wins (names lowercased): Inductor's sampling and matmul-template kernels before its other fusions,
# attention before matmuls (cuDNN's attention kernel names hold "gemm"-like parts), copies before elementwise
# (PyTorch's dtype casts run inside "vectorized_elementwise_kernel<... copy_kernel ...>").
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decode attention", ("prefix_attention", "flash", "fmha", "sdpa", "scaled_dot_product", "attention")),
    ("sampling", ("exponential", "argmax", "softmax", "multinomial", "topk", "sort", "uniform", "random")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "triton_tem_", "aten::mm", "aten::addmm", "aten::bmm",
                "scaled_mm", "matmul")),
    ("fused by Inductor", ("triton_", "cpp_fused", "compiledfxgraph")),
    ("norm", ("rms_norm", "layer_norm", "rsqrt", "aten::pow", "aten::mean")),
    ("copy / cache write / gather", ("copy", "cat", "index", "scatter", "gather", "fill", "clone", "stack", "slice",
                                     "where", "expand")),
    ("eager elementwise", ("elementwise", "aten::mul", "aten::add", "aten::sub", "aten::silu", "aten::sigmoid",
                           "complex", "aten::div", "aten::neg")),
    ("compiled-code guards and calls", ("torchdynamo", "pregraph bytecode", "torch-compiled region")),
)


# aten operators that launch no kernel (views, allocation, dispatch): their CPU time is the eager overhead.
NO_KERNEL = frozenset(f"aten::{op}" for op in (
    "view", "as_strided", "transpose", "unsqueeze", "squeeze", "split", "split_with_sizes", "empty", "empty_strided",
    "empty_like", "t", "to", "linear", "reshape", "_reshape_alias", "detach", "alias", "select", "permute",
    "contiguous", "unflatten", "flatten", "_unsafe_view", "resolve_conj", "resolve_neg", "lift_fresh", "chunk",
    "narrow", "expand_as", "view_as", "result_type", "unbind", "item", "_local_scalar_dense", "matmul"))


def kernel_family(name: str) -> str:
    """The family of a CUDA kernel or aten operator name (see :data:`FAMILIES`); ``other`` when none matches."""
    if name in NO_KERNEL:
        return "views, allocation, dispatch"
    low = name.lower()
    for family, keys in FAMILIES:
        if any(k in low for k in keys):
            return family
    return "other"


def fed_rows(sampler: WavefrontSampler) -> int:
    """Rows the trunk takes in one period: every pass of both cohorts, each fed cell of each sample (CFG rows
    counted), PAR transition tokens included (a plan's ``positions`` already hold them)."""
    plans = sampler.slots[0].state.plans
    cells = sum(len(p.positions) for p in plans)
    return 2 * cells * sampler.batch * (2 if sampler.sampling.guided else 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="NAR-tiny")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides")
    ap.add_argument("--batch", type=int, default=64, help="samples per cohort (two cohorts are in flight)")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", nargs="?", const="default", default=None,
                    help="compile the blocks (optionally a torch.compile mode, e.g. max-autotune)")
    ap.add_argument("--periods", type=int, default=3, help="warm periods timed before the profiled one")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by the card's name)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here (markdown)")
    args = ap.parse_args(argv)
    command = shlex.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])

    device = torch.device(args.device)
    cfg = NARConfig.from_name(args.preset, **parse_overrides(args.set))
    model = random_model(cfg, device, DTYPES[args.dtype])
    sampling = SamplingConfig(cfg_scale=args.guidance)
    compile_mode = {None: False, "default": True}.get(args.compile, args.compile)
    sampler = WavefrontSampler(model, args.batch, sampling, cuda_graph=False, compile=compile_mode)
    labels = torch.arange(args.batch, device=device) % cfg.num_classes
    a, b = sampler.slots
    a.load(labels, 0, both=True)
    b.load(labels.flip(0), 1, both=True)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    sampler.run_period()  # compiles, when asked
    sync()
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.periods):
        sampler.run_period()
    sync()
    period_s = (time.perf_counter() - start) / max(args.periods, 1)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        sampler.run_period()
        sync()
    events = prof.key_averages()
    if cuda:
        timed = [(e.key, e.self_device_time_total, e.count) for e in events if e.self_device_time_total > 0]
    else:
        timed = [(e.key, e.self_cpu_time_total, e.count) for e in events if e.self_cpu_time_total > 0]
    total_us = sum(t for _, t, _ in timed)
    if total_us <= 0:
        print("the profiler recorded no time", file=sys.stderr)
        return 1

    rows = fed_rows(sampler)
    flops = 2 * args.batch * sampling_flops_per_image(cfg, sampling.guided)  # a period completes two cohorts
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak = args.peak_tflops or (peak_tflops(name) if cuda else None)
    fam_us: dict[str, float] = defaultdict(float)
    fam_n: dict[str, int] = defaultdict(int)
    for key, t, n in timed:
        fam_us[kernel_family(key)] += t
        fam_n[kernel_family(key)] += n

    what = "GPU kernel time" if cuda else "self CPU time of the aten operators"
    lines = [
        f"# One wavefront period: {args.preset} {'x'.join(map(str, cfg.grid))}, batch {args.batch} per cohort, "
        f"CFG {args.guidance}, {args.dtype}, {'compiled (' + args.compile + ')' if args.compile else 'eager'}, "
        f"on {name}",
        "",
        f"Command: `{command}` (torch {torch.__version__}).",
        "",
        f"{sampler.num_passes} passes per period, two cohorts in flight, {rows} fed rows per period "
        f"({rows / sampler.num_passes:.0f} a pass on average). First period (compiling, when asked) "
        f"{first_s:.2f} s; a warm period {1e3 * period_s:.2f} ms wall outside the CUDA graph "
        f"({args.periods} timed); profiled {what}: {total_us / 1e3:.2f} ms.",
    ]
    if peak:
        ideal_ms = 1e3 * flops / (peak * 1e12)
        lines.append(f"Counted FLOPs of the period ({flops / 1e12:.3f} TFLOP) at the dense bf16 peak of {peak:g} "
                     f"TFLOP/s: {ideal_ms:.2f} ms, {ideal_ms / (total_us / 1e3):.1%} of the profiled time.")
    lines += ["", "| family | ms per period | share | us per fed row | calls per period |", "|---|---|---|---|---|"]
    for family, t in sorted(fam_us.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {family} | {t / 1e3:.3f} | {t / total_us:.1%} | {t / rows:.4f} | {fam_n[family]} |")
    lines.append(f"| all | {total_us / 1e3:.3f} | 100% | {total_us / rows:.4f} | {sum(fam_n.values())} |")
    lines += ["", f"The {args.top} costliest {'kernels' if cuda else 'operators'}:", "",
              "| kernel | family | ms per period | share | calls | us per call |", "|---|---|---|---|---|---|"]
    for key, t, n in sorted(timed, key=lambda r: -r[1])[:args.top]:
        short = key if len(key) <= 110 else key[:107] + "..."
        short = short.replace("|", "/")
        lines.append(f"| `{short}` | {kernel_family(key)} | {t / 1e3:.3f} | {t / total_us:.1%} | {n} | {t / n:.2f} |")
    report = "\n".join(lines) + "\n"
    print(report, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
