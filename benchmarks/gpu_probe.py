"""Where the GPU time of NAR-L sampling and VQ-16 decoding goes, and which candidate changes pay.

One device call (see benchmarks/gpu_checks.sh for the reported figures); prints short tables and
writes the full profiler tables under $OUT:

  1. a kernel profile of one eager NAR-L generation (batch 256, CFG 2, bf16), by kernel and by family;
  2. the CUDA-graph sampler under each scaled-dot-product-attention backend;
  3. SwiGLU with w1 and w3 as one matmul (same arithmetic, one launch and one read of x fewer);
  4. the VQ-16 decoder at batch 64: eager bf16/fp16 channels_last against ``torch.compile``.

    PYTHONPATH=src:.device-site OUT=/tmp/probe python3 benchmarks/gpu_probe.py
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nar.model import NARConfig
from nar.model.layers import FeedForward
from nar.sampling.bench import random_model, time_call
from nar.sampling.fast import FastSampler
from nar.sampling.logits import SamplingConfig

OUT = Path(os.environ.get("OUT", "/tmp/nar-probe"))
OUT.mkdir(parents=True, exist_ok=True)
dev = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = True
sampling = SamplingConfig(cfg_scale=2.0)


def log(msg: str) -> None:
    print(msg, flush=True)
    with (OUT / "probe.txt").open("a") as fh:
        fh.write(msg + "\n")


def family(name: str) -> str:
    n = name.lower()
    for key, fam in (("gemm", "gemm"), ("cutlass", "gemm"), ("sm90_xmma", "gemm"), ("nvjet", "gemm"),
                     ("flash", "attention"), ("fmha", "attention"), ("cudnn", "attention"), ("attention", "attention"),
                     ("exponential", "sampling"), ("argmax", "sampling"), ("reduce", "reduce"),
                     ("copy", "copy"), ("cat", "copy"), ("index", "index"), ("triton", "triton")):
        if key in n:
            return fam
    return "elementwise/other"


def images_per_s(model, batch: int, compile: bool = False) -> float:
    labels = torch.randint(0, 1000, (batch,), device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    sampler = FastSampler(model, batch, sampling, compile=compile)
    sec = time_call(lambda: sampler(labels, generator=gen), dev, 2, 5, 2.0)
    return batch / sec


log(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
cfg = NARConfig.from_name("NAR-L")
model = random_model(cfg, dev, torch.bfloat16)

# 1. kernel profile of one eager generation at batch 256
batch = 256
labels = torch.randint(0, 1000, (batch,), device=dev)
eager = FastSampler(model, batch, sampling, cuda_graph=False)
eager(labels)
torch.cuda.synchronize()
t0 = time.perf_counter()
eager(labels)
torch.cuda.synchronize()
log(f"eager generation, batch {batch}: {time.perf_counter() - t0:.3f} s")
from torch.profiler import ProfilerActivity, profile  # noqa: E402

with profile(activities=[ProfilerActivity.CUDA]) as prof:
    eager(labels)
    torch.cuda.synchronize()
del eager
events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
total = sum(e.self_device_time_total for e in events)
fam = defaultdict(float)
count = defaultdict(int)
for e in events:
    fam[family(e.key)] += e.self_device_time_total
    count[family(e.key)] += e.count
log(f"GPU kernel time of one generation: {total / 1e3:.1f} ms")
log("| family | ms | share | kernels |\n|---|---|---|---|")
for k, v in sorted(fam.items(), key=lambda kv: -kv[1]):
    log(f"| {k} | {v / 1e3:.1f} | {100 * v / total:.1f}% | {count[k]} |")
try:
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=90)
except Exception:  # older spelling
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90)
(OUT / "profile_nar_l_b256.txt").write_text(table)
log("\n".join(table.splitlines()[:24]))

# 2. attention backends inside the CUDA graph
log("\n| variant | batch | images/s |\n|---|---|---|")
for b in (64, 256):
    log(f"| graph, default SDPA | {b} | {images_per_s(model, b):.1f} |")
for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                      ("cudnn", SDPBackend.CUDNN_ATTENTION)):
    try:
        with sdpa_kernel([backend]):
            log(f"| graph, SDPA {name} | 256 | {images_per_s(model, 256):.1f} |")
    except Exception as err:  # a backend that does not support these shapes
        log(f"| graph, SDPA {name} | 256 | failed: {str(err).splitlines()[0][:80]} |")

# 3. SwiGLU with one matmul for w1 and w3
plain_forward = FeedForward.forward


def fused_forward(self, x):
    w13 = getattr(self, "_w13", None)
    if w13 is None:
        w13 = self._w13 = torch.cat([self.w1.weight, self.w3.weight]).detach()
    a, b = F.linear(x, w13).chunk(2, dim=-1)
    return self.w2(F.silu(a) * b)


FeedForward.forward = fused_forward
for b in (64, 256):
    log(f"| graph, fused w1|w3 | {b} | {images_per_s(model, b):.1f} |")
FeedForward.forward = plain_forward

# 4. VQ-16 decoder, batch 64
from nar.tokenizers import build_tokenizer  # noqa: E402


@torch.no_grad()
def decode_rates(dtype: torch.dtype) -> None:
    tok = build_tokenizer("vq-16").to(device=dev, dtype=dtype).eval().to(memory_format=torch.channels_last)
    codes = torch.randint(0, tok.codebook_size, (64, 16, 16), device=dev)
    sec = time_call(lambda: tok.decode(codes), dev, 2, 5, 2.0)
    log(f"| eager channels_last {dtype} | {64 / sec:.1f} |")
    t0 = time.perf_counter()
    fn = torch.compile(tok.decode_latents)
    fn(tok.quantize.lookup(codes))
    torch.cuda.synchronize()
    took = time.perf_counter() - t0
    sec = time_call(lambda: fn(tok.quantize.lookup(codes)), dev, 2, 5, 2.0)
    log(f"| compiled ({took:.0f} s to compile) {dtype} | {64 / sec:.1f} |")


torch.backends.cudnn.benchmark = True
log("\n| VQ-16 decode, batch 64 | images/s |\n|---|---|")
for dt in (torch.bfloat16, torch.float16):
    decode_rates(dt)
log("done")
