#!/bin/bash
# COCO val2017 detection AP of a GLIP checkpoint on one device (tools/test_grounding_net.py).
#   bash test/eval_1p.sh [--batch_size=8] [--load_from=pretrain/glip_tiny_model_o365_goldg_cc_sbu.pth]
#                        [--data_path=DIR] [--small] ...   (options: see test/common.sh)
NETWORK="GLIP_for_PyTorch"
BATCH_SIZE=8
WORLD_SIZE=1
USE_AMP=False
EVAL_SUBSET=-1
CASE_KIND=eval

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
setup_run
launch_eval
report eval
