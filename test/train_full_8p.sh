#!/bin/bash
# GLIP-T fine-tuning on COCO (coco_grounding_train) on 8 devices (those present), then COCO val AP.
#   bash test/train_full_8p.sh [--batch_size=8] [--load_from=...] [--fp16|--fp32] [--data_path=DIR] ...
#   (global batch over all processes; options: see test/common.sh)
NETWORK="GLIP_for_PyTorch"
BATCH_SIZE=8
TEST_BATCH_SIZE=16
WORLD_SIZE=8
USE_AMP=True
MAX_EPOCH=24
EARLY_STOP_ITERATION=-1
EVAL_SUBSET=-1
CASE_KIND=acc

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
setup_run
launch_training
report train
