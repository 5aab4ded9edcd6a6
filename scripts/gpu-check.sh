#!/usr/bin/env bash
# wick's one-shot GPU check (docs/cuda.md, "Running the GPU check"). Runs on the GPU machine
# (one H200, CUDA 13.0 driver, PyTorch installed, no Rust, no network) from the repository
# root, with the payload of `cargo xtask gpu-pack` carried in target/gpu-pack:
#   1. numerics: every wick-nn op forward and backward on the GPU against the CPU (f32,
#      f32 with TF32, bf16) and one xresnet50 train step (wick device-check);
#   2. the NCCL data-parallel path at world size 1 (wick train --gpus 1, one short epoch);
#   3. throughput of xresnet50 train steps at 128/224 px, batch 64/128, f32/bf16: wick
#      (wick bench-step), then PyTorch with the reference xresnet50 (scripts/anchor_bench.py);
#   4. chapter 7's 5-epoch baseline at 128 px (scripts/gpu-check/baseline-128.toml).
# Every result goes under $OUT (at most 8 files come back: summary.md, log.txt, env.txt,
# numerics.json, throughput.jsonl, torch.jsonl, baseline.json, results.tar.gz). Each step
# has a time limit and the whole run stays inside GPU_CHECK_BUDGET seconds (default 550);
# GPU_CHECK_ONLY=numerics,ddp,wick-bench,torch-bench,baseline picks steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
PACK="${GPU_CHECK_PACK:-target/gpu-pack}"
BUDGET="${GPU_CHECK_BUDGET:-550}"
ONLY="${GPU_CHECK_ONLY:-numerics,ddp,wick-bench,torch-bench,baseline}"
WORK="${GPU_CHECK_WORK:-/tmp/wick-gpu-check}"
START=$(date +%s)
# Errors print their message without candle's captured backtrace (panics still get theirs).
export RUST_LIB_BACKTRACE=0
mkdir -p "$OUT" "$WORK/logs" "$WORK/runs"
LOG="$OUT/log.txt"
: >"$LOG"
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }
# Runs "$@" with a time limit of min($1, time left - reserve) seconds, output to log file $2.
step() {
  local limit=$1 name=$2; shift 2
  local avail=$(( $(left) - 15 ))
  (( limit > avail )) && limit=$avail
  if (( limit < 10 )); then log "SKIP $name: out of time"; return 1; fi
  log "RUN  $name (limit ${limit}s): $*"
  timeout --kill-after=5 "$limit" "$@" >"$WORK/logs/$name.txt" 2>&1
  local rc=$?
  log "DONE $name rc=$rc"
  tail -n 5 "$WORK/logs/$name.txt" | sed 's/^/    /' | tee -a "$LOG"
  return $rc
}

# ---- 0. payload and environment ---------------------------------------------------------
log "payload: $(ls -l "$PACK" 2>&1 | tr '\n' ' ')"
xz -dc "$PACK/wick.xz" >"$WORK/wick" && chmod +x "$WORK/wick" || { log "no wick binary in $PACK"; exit 1; }
WICK="$WORK/wick"
TAR=$(ls "$PACK"/imagenette-*.tar* 2>/dev/null | head -n1)
DATA="$WORK/imagenette"
if [ -n "$TAR" ]; then
  mkdir -p "$DATA"
  (tar -xf "$TAR" -C "$DATA" && touch "$DATA/.done") &
  UNTAR=$!
else
  log "no Imagenette pack in $PACK: the training steps will be skipped"
  UNTAR=""
fi
# The CUDA libraries the binary links (cuBLAS, cuRAND, cudart, cuDNN, NCCL) come from the
# PyTorch environment's nvidia wheels.
NVLIBS=$(python3 - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("nvidia")
dirs = set()
for root in (spec.submodule_search_locations if spec else []):
    for d, _, files in os.walk(root):
        if os.path.basename(d) == "lib" and any(".so" in f for f in files):
            dirs.add(d)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  nvidia-smi 2>&1 | head -n 4
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1
  python3 -m pip list 2>/dev/null | grep -i -E '^nvidia-(cudnn|nccl|cublas|cuda-runtime|curand)' 
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "--- ldd wick"; ldd "$WICK" 2>&1
  echo "--- wick --version"; "$WICK" --version 2>&1
  nproc; free -g | head -n 2
} >"$OUT/env.txt" 2>&1
if grep -q "=> not found" "$OUT/env.txt"; then log "WARNING: ldd reports missing libraries (see env.txt)"; fi

wait_data() {
  if [ -n "$UNTAR" ]; then wait "$UNTAR"; UNTAR=""; fi
  [ -f "$DATA/.done" ]
}

# ---- 1. numerics --------------------------------------------------------------------------
if wanted numerics; then
  step 150 numerics "$WICK" device-check --device cuda:0 --json "$OUT/numerics.json"
fi

# ---- 2. NCCL data parallel at world size 1 ------------------------------------------------
if wanted ddp && wait_data; then
  step 90 ddp "$WICK" train --recipe scripts/gpu-check/baseline-128.toml --profile ddp-smoke \
    --data "$DATA" --out "$WORK/runs/ddp" --gpus 1
fi

# ---- 3. throughput: wick, then PyTorch -----------------------------------------------------
if wanted wick-bench; then
  : >"$OUT/throughput.jsonl"
  for size in 128 224; do for bs in 64 128; do for precision in f32 bf16; do
    step 40 "bench-$size-$bs-$precision" "$WICK" bench-step --arch xresnet50 --size $size \
      --batch-size $bs --precision $precision --device cuda:0 --steps 8 --warmup 3
    grep '^{' "$WORK/logs/bench-$size-$bs-$precision.txt" >>"$OUT/throughput.jsonl"
  done; done; done
fi
if wanted torch-bench; then
  : >"$OUT/torch.jsonl"
  env_flag=""
  for bs in 64 128; do for amp in none bf16; do
    step 60 "torch-$bs-$amp" python3 scripts/anchor_bench.py --device cuda --amp $amp --bs $bs \
      --cases train50_128,train50_224 --no-isolate --steps 8 --warmup 3 --budget 10 $env_flag
    grep '^{' "$WORK/logs/torch-$bs-$amp.txt" >>"$OUT/torch.jsonl"
    env_flag="--no-env"
  done; done
fi

# ---- 4. chapter 7 baseline at 128 px ------------------------------------------------------
if wanted baseline && wait_data; then
  step 100000 baseline "$WICK" train --recipe scripts/gpu-check/baseline-128.toml \
    --data "$DATA" --out "$WORK/runs/baseline" --device cuda:0
  cp "$WORK/runs/baseline/result.json" "$OUT/baseline.json" 2>/dev/null || true
fi

# ---- summary ------------------------------------------------------------------------------
python3 - "$OUT" "$WORK" <<'PY' >"$OUT/summary.md" 2>>"$LOG"
import json, os, sys
out, work = sys.argv[1], sys.argv[2]
def lines(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.startswith("{")]
print("# wick GPU check\n")
env = open(os.path.join(out, "env.txt")).read().splitlines()
print("```\n" + "\n".join(env[:8]) + "\n```\n")
num = os.path.join(out, "numerics.json")
if os.path.exists(num):
    n = json.load(open(num))
    failed = [o for o in n["ops"] if not o["passed"]]
    print(f"## Numerics\n\nops within tolerance: {n['ops_passed']} ({len(n['ops'])} tensors, {len(failed)} outside)\n")
    for o in failed:
        print(f"- FAIL {o['case']} {o['tensor']} {o['dtype']} tf32={o['tf32']}: rel {o['relative']:.3e} > {o['tolerance']:.1e}")
    for s in n["train_steps"]:
        print(f"- train step {s['precision']}: loss cpu {s['loss_cpu']:.6f} gpu {s['loss_device']:.6f}, logits rel {s['logits_relative']:.2e}, "
              f"grad rel median {s['median_grad_relative']:.2e} worst {s['worst_grad_relative']:.2e} ({s['worst_grad_param']}), update rel {s['update_relative']:.2e}")
    print()
wick = lines("throughput.jsonl")
torch = [r for r in lines("torch.jsonl") if r.get("kind") == "train"]
if wick or torch:
    print("## xresnet50 train step throughput (images/s, median step)\n")
    print("| size | batch | precision | wick | PyTorch | wick / PyTorch |\n|---|---|---|---|---|---|")
    for size in (128, 224):
        for bs in (64, 128):
            for prec, amp in (("f32", "none"), ("bf16", "bf16")):
                w = next((r for r in wick if r["size"] == size and r["bs"] == bs and r["precision"] == prec), None)
                t = next((r for r in torch if r["size"] == size and r["bs"] == bs and r.get("amp") == amp), None)
                wi = w["images_per_s"] if w else None
                ti = t["images_per_s"] if t else None
                ratio = f"{wi / ti:.2f}" if wi and ti else "-"
                f = lambda v: f"{v:.0f}" if v else "-"
                print(f"| {size} | {bs} | {prec} | {f(wi)} | {f(ti)} | {ratio} |")
    print()
base = os.path.join(out, "baseline.json")
if os.path.exists(base):
    b = json.load(open(base))
    print(f"## Chapter 7 baseline at 128 px (5 epochs)\n\naccuracy {b.get('accuracy')}, valid loss {b.get('valid_loss')}, {b.get('seconds', 0):.0f} s of epochs\n")
    for stage in b.get("stages", []):
        for table in stage.get("tables", []):
            print("```\n" + table + "\n```")
ddp = os.path.join(work, "logs", "ddp.txt")
if os.path.exists(ddp):
    print("## NCCL world size 1\n\n```\n" + "".join(open(ddp).readlines()[-6:]) + "```")
PY
tar -czf "$OUT/results.tar.gz" --exclude="*.safetensors" -C "$WORK" logs runs 2>>"$LOG"
log "finished in $(( $(date +%s) - START ))s; summary:"
cat "$OUT/summary.md"
