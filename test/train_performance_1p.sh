#!/bin/bash
# GLIP-T training throughput on one device: a short run (--early_stop_iteration, default 2500), then AP on the
# first 200 COCO val images.
#   bash test/train_performance_1p.sh [--batch_size=1] [--load_from=...] [--fp16|--fp32] [--data_path=DIR]
#                                     [--early_stop_iteration=N] [--small] ...   (options: see test/common.sh)
NETWORK="GLIP_for_PyTorch"
BATCH_SIZE=1
TEST_BATCH_SIZE=8
WORLD_SIZE=1
USE_AMP=False
MAX_EPOCH=24
EARLY_STOP_ITERATION=2500
EVAL_SUBSET=200
CASE_KIND=perf

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
setup_run
launch_training
report train
