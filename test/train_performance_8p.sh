#!/bin/bash
# GLIP-T training throughput on 8 devices (those present): a short run (--early_stop_iteration, default 1000),
# then AP on the first 200 COCO val images.
#   bash test/train_performance_8p.sh [--batch_size=8] [--load_from=...] [--fp16|--fp32] [--data_path=DIR] ...
#   (global batch over all processes; options: see test/common.sh)
NETWORK="GLIP_for_PyTorch"
BATCH_SIZE=8
TEST_BATCH_SIZE=16
WORLD_SIZE=8
USE_AMP=True
MAX_EPOCH=24
EARLY_STOP_ITERATION=1000
EVAL_SUBSET=200
CASE_KIND=perf

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
setup_run
launch_training
report train
