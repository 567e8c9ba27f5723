#!/usr/bin/env bash
# Issue 9's GPU figures in one run (about 10 minutes on one H100): SD 1.5 architecture at 512 px,
# LoRA rank 16 with prior preservation, batch 1.
#   fp16 and bf16: the trainer (a), --no-cache (b), the floor (c) and the interleaved a/c (i);
#   then, for each precision, (a) and (c) with gradient checkpointing, with 8-bit Adam (when
#   bitsandbytes imports), and with both.
# Each line it prints is a BENCHMARKS.md row; the JSON of every run goes to ${OUT:-bench-gpu}/.
set -u
OUT=${OUT:-bench-gpu}
mkdir -p "$OUT"
PY=${PY:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
run() {  # name, then benchmark flags
  local name=$1; shift
  timeout 300 "$PY" -m benchmarks.train --arch sd15 --resolution 512 --steps 5 --warmup 2 \
    --json "$OUT/$name.json" "$@" 2>"$OUT/$name.err" | tee -a "$OUT/rows.md" || echo "| $name failed: $(tail -1 "$OUT/$name.err") |"
}
for p in fp16 bf16; do
  run "$p" --precision "$p"
done
if "$PY" -c "import bitsandbytes" 2>/dev/null; then BNB=1; else BNB=0; echo "(no bitsandbytes: 8-bit Adam rows skipped)"; fi
for p in fp16 bf16; do
  run "$p-gc" --precision "$p" --gradient-checkpointing --variants a,c
  if [ "$BNB" = 1 ]; then
    run "$p-8bit" --precision "$p" --adam-8bit --variants a,c
    run "$p-gc-8bit" --precision "$p" --gradient-checkpointing --adam-8bit --variants a,c
  fi
done
# Issue 20: FLUX.1 [dev] and SD 3.5 Medium architectures (a few blocks at the published widths; the
# full models' weight memory from the block counts), LoRA step at 1024 px in bf16, with the base in
# bf16, int8, fp8 and nf4.
timeout 600 "$PY" -m benchmarks.flow --resolution 1024 --steps 3 --quantize int8,fp8,nf4 \
  --json "$OUT/flow.json" 2>"$OUT/flow.err" | tee -a "$OUT/rows.md" || echo "| flow failed: $(tail -1 "$OUT/flow.err") |"
