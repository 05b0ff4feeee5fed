#!/usr/bin/env bash
# Every GPU check of the sampling work in one call on the lent device (README "Benchmarks"), most important
# first, each section under its own time limit so a slow one cannot take the others with it; the benchmark
# files are rewritten after every row, so a section cut short keeps the rows it finished.
#   run with:  bash benchmarks/gpu_checks.sh        (results and gpu_checks.log under $OUT; ~9.7 min: give the
#   device call timeout_s=595 and run it first thing, before anything else spends the 15-minute budget)
# Limits sized from the 2026-12-04 H200 run (benchmarks/results/h200-2026-12-04/): start-up ~35 s per section,
# compiling a NAR-L sampler ~55 s, the VQ-16 decoder ~36 s per batch size.
# Order: the compiled headline rows (the one-batch compiled row, measured at batch 64 on both cards before, gives
# its place to fp8 weights + an fp8 KV cache, the lower floor of benchmarks/results/roofline-2026-12-07/); then
# the kernel profile of the compiled wavefront period (where the time per fed row goes: the measurement the next
# speed-up needs); NAR-B; the GPU tests; last, the uncompiled wavefront, reference and raster rows at batch 64
# (measured on the H200 before). The fp8 agreement report
# (benchmarks/fp8_agreement.py) is left out: on random weights its greedy agreement says little, and the
# 2026-12-04 run has it.
# The device image has torch but not omegaconf/webdataset: they travel as pure-Python copies in
# .device-site/ (make it with benchmarks/prepare_device_site.sh; name .device-site in the call's carry).
# At most 8 files come back from a call: the log, three benchmark pairs (.json + .md) and the profile.
# SMOKE=1 runs the same commands on this machine's CPU with tiny presets and batches and no time limits
# (`SMOKE=1 PY=.venv/bin/python bash benchmarks/gpu_checks.sh`, 6 min on 2 cores): every flag is checked here,
# so none can waste the device's minutes.
set -uo pipefail
export PYTHONPATH="$PWD/src:$PWD/.device-site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/nar-gpu}"; mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
PY="${PY:-python3}"
NAR="$PY -m nar.cli.main"
if [ "${SMOKE:-0}" = 1 ]; then
  DEV=cpu; DT=fp32; LP="NAR-tiny"; BP="NAR-tiny"; B1="2 4"; B2=4; limit() { shift; "$@"; }
else
  DEV=cuda; DT=bf16; LP="NAR-L"; BP="NAR-B"; B1="64 256"; B2=256; limit() { timeout "$@"; }
fi
L="--guidance 2.0 --dtype $DT --device $DEV --iters 3 --min-time 1 --out $OUT"
quiet() { grep -v -e Warning -e "return t.to" -e "warnings.warn"; }
section() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
{ [ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, '$DEV')"
} 2>&1 | tee -a "$LOG"

section "1. NAR-L compiled wavefront: bf16, fp8 weights, fp8 weights + fp8 KV cache; tokens + VQ-16 decode"
limit 290 $NAR bench --preset $LP --batch $B1 $L --schedules nar --variants wavefront+compile \
    fp8+wavefront+compile fp8+fp8kv+wavefront+compile \
    --decode-with wavefront+compile --tokenizer vq-16 --decode-dtype bf16 --decode-compile 2>&1 | quiet | tee -a "$LOG"

section "2. Kernel profile of one compiled wavefront period (NAR-L, batch 64 per cohort, CFG 2.0, bf16)"
limit 95 $PY benchmarks/pass_profile.py --preset $LP --batch ${B1%% *} --guidance 2.0 --dtype $DT --device $DEV \
    --compile --out "$OUT/pass_profile-$LP-b${B1%% *}.md" 2>&1 | quiet | tee -a "$LOG"

section "3. NAR-B at batch 256: fast, wavefront+compile"
limit 80 $NAR bench --preset $BP --batch $B2 $L --schedules nar --variants wavefront+compile 2>&1 | quiet \
    | tee -a "$LOG"

section "4. GPU tests: wavefront graph == eager, bf16 agreement, fp8 weights kernel, decode attention (fp8 KV too)"
limit 60 $PY -m pytest -q -p no:cacheprovider -m gpu tests/sampling/test_wavefront.py tests/model/test_fp8.py \
    tests/model/test_decode_attention.py \
    2>&1 | tail -15 | tee -a "$LOG"

section "5. NAR-L at batch 64, uncompiled: fast sampler, wavefront, reference, raster"
limit 55 $NAR bench --preset $LP --batch ${B1%% *} $L --reference --schedules nar raster --variants wavefront \
    2>&1 | quiet | tee -a "$LOG"
section "done"
