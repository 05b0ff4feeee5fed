#!/usr/bin/env bash
# Every GPU check in one call on the lent device (see README "Benchmarks"). Writes results under $OUT.
#   run with:  bash benchmarks/gpu_checks.sh
# The device image has torch but not omegaconf/webdataset: they travel as pure-Python copies in
# .device-site/ (make it with benchmarks/prepare_device_site.sh; name .device-site in the call's carry).
set -uo pipefail
export PYTHONPATH="$PWD/src:$PWD/.device-site${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/nar-gpu}"; mkdir -p "$OUT"
PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
echo "== gpu tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -m gpu tests/sampling tests/model 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
echo "== NAR-L training throughput and MFU, one GPU, per-device batch 32 (the 8-GPU recipe), bf16, compiled"
timeout 300 $PY benchmarks/train_throughput.py --preset NAR-L --batch 32 --dtype bf16 --compile --device cuda \
    --out "$OUT" 2>&1 | tail -3 | tee "$OUT/train_throughput.txt"
echo "== NAR-L: NAR vs raster vs reference, CFG 2.0, bf16; VQ-16 decode fp32 and bf16, eager and compiled"
timeout 240 $PY -m nar.cli.main bench --preset NAR-L --batch 64 256 --guidance 2.0 --dtype bf16 --device cuda \
    --reference --tokenizer-decode --decode-dtype fp32 bf16 --decode-compile --iters 5 --min-time 2 --out "$OUT" 2>&1 \
    | grep -v -e Warning -e "return t.to" | tee "$OUT/bench_nar_l.txt"
echo "== NAR-L with PyTorch's SDPA instead of the small-query kernel (the attention change, side by side)"
timeout 90 $PY -m nar.cli.main bench --preset NAR-L --batch 64 256 --guidance 2.0 --dtype bf16 --device cuda \
    --no-raster --attention sdpa --iters 5 --min-time 2 --out "$OUT" 2>&1 \
    | grep -v -e Warning -e "return t.to" | tail -8 | tee "$OUT/bench_nar_l_sdpa.txt"
echo "== NAR-L compiled blocks (inductor) inside the CUDA graph"
timeout ${COMPILE_TIMEOUT:-200} $PY -m nar.cli.main bench --preset NAR-L --batch 64 256 --guidance 2.0 --dtype bf16 \
    --device cuda --no-raster --compile --iters 5 --min-time 2 --out "$OUT" 2>&1 \
    | grep -v -e Warning -e "return t.to" | tail -8 | tee "$OUT/bench_nar_l_compile.txt"
