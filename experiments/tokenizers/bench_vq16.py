"""Decode/encode throughput of LlamaGen's VQ-16 (random weights, fp32 and bf16) on the current device.

    python experiments/tokenizers/bench_vq16.py --batch 64
Reference (NAR_SPEC §7): LlamaGen's own VQ-16 decoder, fp32, decoded 367 images/s at batch 64 on an H100.
"""

from __future__ import annotations

import argparse
import time

import torch

from nar.tokenizers import build_tokenizer


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    tokenizer = build_tokenizer("vq-16").cuda().eval()
    x = torch.rand(args.batch, 3, 256, 256, device="cuda") * 2 - 1
    codes = tokenizer.encode(x)
    print(f"device {torch.cuda.get_device_name()}  batch {args.batch}  grid {tuple(codes.shape[1:])}")
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            dec = timed(lambda: tokenizer.decode(codes), args.repeats)
            enc = timed(lambda: tokenizer.encode(x), args.repeats)
        print(f"{str(dtype):15s} decode {args.batch / dec:8.1f} img/s   encode {args.batch / enc:8.1f} img/s")
    print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
