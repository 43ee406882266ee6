#!/bin/bash
# GLIP-T fine-tuning on COCO (coco_grounding_train), one device, then COCO val AP.
#   bash test/train_full_1p.sh [--batch_size=1] [--load_from=pretrain/glip_tiny_model_o365_goldg_cc_sbu.pth]
#                              [--fp16|--fp32] [--data_path=DIR] [--small] ...   (options: see test/common.sh)
NETWORK="GLIP_for_PyTorch"
BATCH_SIZE=1
TEST_BATCH_SIZE=8
WORLD_SIZE=1
USE_AMP=False
MAX_EPOCH=24
EARLY_STOP_ITERATION=35000
EVAL_SUBSET=-1
CASE_KIND=acc

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
setup_run
launch_training
report train
