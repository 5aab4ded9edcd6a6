#!/usr/bin/env bash
# nvcc for `cargo xtask cuda-check` (a `cargo check` / `cargo clippy` of the CUDA features,
# which never links and never loads a kernel). wick's own kernels (crates/wick-nn/src/ops/
# cuda/kernels.cu) always go through the real nvcc ($WICK_REAL_NVCC), so a CUDA C error in
# wick still fails the check. candle-kernels' sources are upstream code, unchanged unless the
# candle version changes, and cost most of a cold check (~13 CPU-minutes for the MoE/GGUF
# static library, several more for the PTX): for them this shim writes empty outputs that
# rustc can include but nothing can run:
#   - `--ptx ... --output-directory DIR src/X.cu`  -> an empty DIR/X.ptx
#   - `-c ... -o OUT src/moe/... .cu`              -> an empty host object OUT
# `cargo xtask cuda-check --full-nvcc` compiles everything for real (in its own target
# directory), and so does `cargo xtask gpu-pack`. Never use this shim for a build that links
# (xtask keeps its target directory apart for that reason).
set -euo pipefail
real="${WICK_REAL_NVCC:?WICK_REAL_NVCC must name the real nvcc}"
# Build scripts run in their package's folder, and candle-kernels names its sources relative
# to it, so the working directory is what identifies them.
candle=0
case "$PWD" in */candle-kernels-*) candle=1 ;; esac
ptx=0
out=""
outdir=""
source=""
prev=""
for arg in "$@"; do
  case "$arg" in
    */candle-kernels-*/*.cu) candle=1; source="$arg" ;;
    *.cu) source="$arg" ;;
    --ptx) ptx=1 ;;
  esac
  if [ "$prev" = "-o" ]; then out="$arg"; fi
  if [ "$prev" = "--output-directory" ]; then outdir="$arg"; fi
  prev="$arg"
done
if [ "$candle" = 1 ]; then
  if [ "$ptx" = 1 ] && [ -n "$outdir" ]; then
    name="$(basename "$source" .cu)"
    : >"$outdir/$name.ptx"
    exit 0
  fi
  if [ -n "$out" ]; then
    printf '' | "${CC:-cc}" -x c -c -o "$out" -
    exit 0
  fi
fi
exec "$real" "$@"
