#!/usr/bin/env bash
# Compile the `cuda` feature without a GPU, so that it never rots: installs NVIDIA's CUDA 13.4 compiler,
# headers and runtime from PyPI wheels into .cache/cuda13 (about 130 MB download, once), then type-checks
# and builds the CUDA kernels of candle through `cargo check --features cuda` of the whole binary (checked,
# not linked: linking would need the driver libraries). Facts: shared/reference/cuda-build.md.
#
#   scripts/cuda-check.sh
#
# First run about 9 minutes on 2 cores (candle-kernels compiles its .cu files with nvcc); later runs
# take seconds while target/ is kept. CUDA_COMPUTE_CAP defaults to 80 (bf16 kernels; 90 for H100/H200).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PREFIX="$PWD/.cache/cuda13"
WHEELS=(nvidia-cuda-nvcc==13.4.92 nvidia-nvvm==13.4.92 nvidia-cuda-runtime==13.4.92 nvidia-cuda-crt==13.4.92 nvidia-cuda-cccl==13.3.5.0.6)
stamp="$(printf '%s\n' "${WHEELS[@]}" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$PREFIX/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    echo "cuda-check: installing ${WHEELS[*]} into $PREFIX" >&2
    rm -rf "$PREFIX"
    PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet --progress-bar off --target "$PREFIX" "${WHEELS[@]}" >&2
    echo "$stamp" >"$PREFIX/.stamp"
fi
export CUDA_HOME="$PREFIX/nvidia/cu13"
export CUDA_PATH="$CUDA_HOME" CUDA_ROOT="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}" CUDARC_CUDA_VERSION=13040 CUDAFORGE_THREADS="$(nproc)"
nvcc --version | tail -2 >&2
cargo check --locked -p pesc-convert --bins --features cuda
echo "cuda-check: pesc-convert (runner, trainer, --device cuda) compiles with --features cuda (compute capability $CUDA_COMPUTE_CAP)" >&2
