#!/usr/bin/env bash
# nvcc for `cargo xtask cuda-check` (a `cargo check` / `cargo clippy` of the CUDA features,
# which never links): every compilation runs the real nvcc ($WICK_REAL_NVCC) except those of
# candle-kernels' static MoE/GGUF library (src/moe/*.cu, src/mmq_gguf/*.cu, src/mmvq_gguf.cu),
# which are ~13 CPU-minutes of nvcc for an archive that only a link would read: for those it
# writes an empty host object. wick's own kernels and candle's PTX kernels are compiled for
# real, so a CUDA C error still fails the check. Never use this shim for a build that links
# (xtask keeps its target directory apart for that reason).
set -euo pipefail
real="${WICK_REAL_NVCC:?WICK_REAL_NVCC must name the real nvcc}"
skip=0
out=""
prev=""
for arg in "$@"; do
  case "$arg" in
    */moe/*.cu | */mmq_gguf/*.cu | */mmvq_gguf.cu) skip=1 ;;
  esac
  if [ "$prev" = "-o" ]; then out="$arg"; fi
  prev="$arg"
done
if [ "$skip" = 1 ] && [ -n "$out" ]; then
  cc="${CC:-cc}"
  printf '' | "$cc" -x c -c -o "$out" -
  exit 0
fi
exec "$real" "$@"
