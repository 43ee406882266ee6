#!/usr/bin/env bash
# Compile the CUDA kernels of csrc/ on a machine without a GPU (FORCE_CUDA=1), for one architecture, into a
# scratch folder (the in-place build of maskrcnn_benchmark._C is left alone), then load the library and check that
# every glip:: op has a CUDA kernel and that the binary holds code for the architecture.
#   tools/build_cuda_check.sh [scratch-dir]      (TORCH_CUDA_ARCH_LIST defaults to 9.0, MAX_JOBS to 1)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-$(mktemp -d)}
export FORCE_CUDA=1 GLIP_REQUIRE_EXTENSION=1
# nvcc may be a wrapper script on PATH (e.g. /usr/local/bin/nvcc), from which torch would guess the wrong root.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-1}
start=$(date +%s)
nice -n 19 python setup.py -q build_ext --build-temp "$BUILD_DIR/temp" --build-lib "$BUILD_DIR/lib"
library=$(find "$BUILD_DIR/lib" -name '_C*.so' | head -1)
echo "built ${library} in $(( $(date +%s) - start )) s (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST})"
python - "$library" <<'PYTHON'
import sys

import torch

torch.ops.load_library(sys.argv[1])
ops = ["ml_nms", "roi_align", "roi_align_backward", "token_sigmoid_focal_loss", "modulated_deform_conv",
       "modulated_deform_conv_backward"]
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"glip::{op}", "CUDA")]
if missing:
    raise SystemExit(f"no CUDA kernel for: {', '.join(missing)}")
print(f"CUDA kernels registered for all {len(ops)} glip ops")
PYTHON
arch=sm_$(echo "${TORCH_CUDA_ARCH_LIST}" | tr -d '.' | cut -d' ' -f1 | cut -d';' -f1)
grep -aq "$arch" "$library" || { echo "no ${arch} device code in ${library}" >&2; exit 1; }
echo "device code for ${arch} present"
