#!/usr/bin/env bash
# Every GPU measurement the README reports, in one run on one CUDA device (about 10 minutes on an H200):
#   1. the CUDA build of the compiled kernels (csrc/),
#   2. the CUDA kernel tests against the float64 CPU references and the golden case on CUDA,
#   3. training throughput and peak memory (benchmarks/bench_train.py, AMP, batch 1 and 8, accelerator plan;
#      batch 1 also on the reference plan),
#   4. eval forward time (benchmarks/bench_model.py, float16 autocast and float32),
#   5. the synthetic main job end to end (bash test/train_full_1p.sh --synthetic).
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]        (default: $OUT when set, else gpu_results/)
#
# Each step has its own time limit, so that one slow step cannot take the others' time; every step's output goes
# to RESULTS_DIR/<step>.log and a summary of the figures to RESULTS_DIR/summary.txt. Python packages the machine
# lacks (yacs, pycocotools) can be installed first, e.g. from wheels with PYTHONPATH pointing at them.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-gpu_results}}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

# run_step NAME SECONDS COMMAND...: run with a time limit, keep the log, note the exit status in the summary.
run_step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name: $*" | tee -a "$RESULTS/summary.txt"
  timeout "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  local status=$?
  echo "--- $name: exit $status after $((SECONDS - start)) s" | tee -a "$RESULTS/summary.txt"
  grep -E "images/s|median|speed-up|passed|failed|Final|AP|execution plan|Total training time" "$RESULTS/$name.log" \
    | tail -n 12 | tee -a "$RESULTS/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/summary.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$RESULTS/summary.txt"

run_step build 300 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-12}" \
  python setup.py build_ext --inplace
run_step cuda_tests 240 env GLIP_REQUIRE_EXTENSION=1 python -m pytest -q -rs tests/test_compiled_ops.py \
  tests/test_model_golden.py -k "cuda"
run_step train_amp_b1 200 python benchmarks/bench_train.py --device cuda --dtype amp --batch-size 1 --warmup 3 \
  --repeat 10 --plans auto reference
run_step train_amp_b8 200 python benchmarks/bench_train.py --device cuda --dtype amp --batch-size 8 --warmup 2 \
  --repeat 5 --plans auto
run_step eval_fp16 150 python benchmarks/bench_model.py --mode eval --device cuda --dtype fp16 --repeat 10 \
  --plans auto reference
run_step eval_fp32 100 python benchmarks/bench_model.py --mode eval --device cuda --dtype fp32 --repeat 10 \
  --plans auto
run_step synthetic 300 bash test/train_full_1p.sh --synthetic --output_path="$RESULTS/synthetic_run" --overwrite
echo "Results in $RESULTS (summary.txt and one log per step)."
