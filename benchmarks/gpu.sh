#!/usr/bin/env bash
# The GPU checks in one run (about 8 minutes on one H100), most important first, each under its own
# time limit so that what finishes comes back:
#   1. every command on every family's tiny model on CUDA (benchmarks.commands): train (bf16, prior,
#      text-encoder LoRA, resume), generate, grid, evaluate, select, export; fp16, 8-bit Adam, full and
#      Textual Inversion on SD 1.5; --quantize-base int8/fp8/nf4 on SD3 and FLUX (issue 20);
#   2. FLUX.1 [dev] and SD 3.5 Medium at full size (random weights), a LoRA step at 1024 px in bf16 with
#      gradient checkpointing, the base in bf16, int8, fp8 and nf4: weights, peak memory, s/step (issue 20);
#   3. SD 1.5 at 512 px, LoRA rank 16 with prior preservation (issue 9): bf16 (a), (b), (c) and the
#      interleaved a/c; generation with a LoRA fused and unfused against the base (issue 3); then fp16
#      (a) and (c).
# The parts' limits add up to about 9 minutes: run it with the device's 600 s limit.
# Each line it prints is a BENCHMARKS.md row; each part's JSON, and stderr.log, go to ${OUT:-bench-gpu}/.
# On the workplace's device machine (torch 2.11+cu130 there, no package index): carry the wheels its image
# lacks, made here (.whl is git-ignored) with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl diffusers==0.42.1 transformers==5.23.0 peft==0.21.2 torchao==0.18.0 bitsandbytes==0.50.2 regex \
#     prodigyopt==1.1.2 schedulefree==1.4.1
# (bitsandbytes' wheel trimmed to its cuda130/cuda132/cpu libraries to keep under the 64 MiB that travels),
# and run, carrying .whl:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site:$PWD/src bash benchmarks/gpu.sh
# First run, 2026-12-05: see BENCHMARKS.md ("The first GPU run").
set -u
OUT=${OUT:-bench-gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch, diffusers, transformers, peft, accelerate, torchao; print('torch', torch.__version__, \
'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, \
'accelerate', accelerate.__version__, 'torchao', torchao.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
part() {  # name, seconds, then the command; its stdout is kept in rows.md, its stderr in stderr.log
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name" >>"$OUT/stderr.log"
  timeout "$limit" "$@" 2>>"$OUT/stderr.log" | tee -a "$OUT/rows.md"
  local code=${PIPESTATUS[0]}
  echo "($name: exit $code after $((SECONDS - start)) s)"
  [ "$code" = 0 ] || tail -3 "$OUT/stderr.log"
}
part commands 150 "$PY" -m benchmarks.commands --json "$OUT/commands.json"
part flow 200 "$PY" -m benchmarks.flow --blocks full --resolution 1024 --steps 2 --gradient-checkpointing \
  --quantize int8,fp8,nf4 --json "$OUT/flow.json"
part sd15-bf16 100 "$PY" -m benchmarks.train --arch sd15 --resolution 512 --steps 5 --warmup 2 --precision bf16 \
  --json "$OUT/sd15-bf16.json"
part generate 50 "$PY" -m benchmarks.generate --arch sd15 --size 512 --steps 20 --images 3 --warmup 1 \
  --json "$OUT/generate.json"
part sd15-fp16 50 "$PY" -m benchmarks.train --arch sd15 --resolution 512 --steps 5 --warmup 2 --precision fp16 \
  --variants a,c --json "$OUT/sd15-fp16.json"
