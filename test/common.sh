#!/bin/bash
# Shared part of the launch scripts (sourced by train_*.sh and eval_1p.sh; not run on its own).
#
# The calling script sets NETWORK, BATCH_SIZE, WORLD_SIZE (processes wanted), USE_AMP, MAX_EPOCH,
# EARLY_STOP_ITERATION (-1: none), EVAL_SUBSET (-1: all test images) and CASE_KIND (acc|perf), then calls
# parse_args "$@", setup_run, and launch_training or launch_eval, then report.
#
# Options (Ascend/seed interface): --batch_size=N (global batch) --load_from=FILE (pretrained weight)
# --fp16 | --fp32 (mixed precision: float16 on NPU/GPU, bfloat16 on CPU) --data_path=DIR (holds coco/)
# --work_dir=DIR --early_stop_iteration=N --max_epoch=N --nproc=N (processes; default: the devices present, up to WORLD_SIZE,
# 1 on CPU) --config=FILE --small (the small test model from tests/fixtures/small on tiny images, for CPU runs)
# --synthetic (configs/synthetic/glip_synthetic.yaml: the shrunk GLIP trained from scratch on the generated shapes
# dataset with that config's own solver settings, no COCO needed) --device_id=N (output folder test/output/N).
# --output_path=DIR (the logs and reports, instead of test/output/N; also the default --work_dir).
# Earlier results are never deleted. Training in a --work_dir that holds a last_checkpoint resumes that run (the same
# command again continues it); --resume insists on one; --overwrite starts a new run in a folder that already holds
# files, only writing over files of the same name; without it such a folder is refused. An earlier log of the same
# name is kept as <log>.N. --dry_run makes every check and says what would run, writing nothing.
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT.

LOAD_FROM="pretrain/glip_tiny_model_o365_goldg_cc_sbu.pth"
CONFIG="configs/pretrain/glip_Swin_T_O365_GoldG.yaml"
DATA_PATH=""
WORK_DIR=""
NPROC=""
SMALL=False
SYNTHETIC=False
DEVICE_ID=${ASCEND_DEVICE_ID:-0}
LOAD_FROM_GIVEN=False
BATCH_SIZE_GIVEN=False
MAX_EPOCH_GIVEN=False
OUTPUT_PATH=""
RESUME=False
OVERWRITE=False
DRY_RUN=False
WRITE_SMALL_INIT=False
RESUME_FLAGS=()

parse_args() {
  for para in "$@"; do
    case $para in
      --batch_size=*) BATCH_SIZE=${para#*=}; BATCH_SIZE_GIVEN=True ;;
      --load_from=*) LOAD_FROM=${para#*=}; LOAD_FROM_GIVEN=True ;;
      --fp16) USE_AMP=True ;;
      --fp32) USE_AMP=False ;;
      --data_path=*) DATA_PATH=${para#*=} ;;
      --work_dir=*) WORK_DIR=${para#*=} ;;
      --early_stop_iteration=*) EARLY_STOP_ITERATION=${para#*=} ;;
      --max_epoch=*) MAX_EPOCH=${para#*=}; MAX_EPOCH_GIVEN=True ;;
      --nproc=*) NPROC=${para#*=} ;;
      --config=*) CONFIG=${para#*=} ;;
      --small) SMALL=True ;;
      --synthetic) SYNTHETIC=True ;;
      --device_id=*) DEVICE_ID=${para#*=} ;;
      --output_path=*) OUTPUT_PATH=${para#*=} ;;
      --resume) RESUME=True ;;
      --overwrite) OVERWRITE=True ;;
      --dry_run) DRY_RUN=True ;;
      *) echo "Unknown option: $para" >&2; exit 2 ;;
    esac
  done
}

# Run from the repository root (the scripts may be started from test/ or from the root).
enter_repo_root() {
  cur_path=$(pwd)
  if [ "$(basename "$cur_path")" == "test" ]; then
    cd ..
  fi
  cur_path=$(pwd)
  test_path_dir=${cur_path}/test
  export PYTHONPATH=${cur_path}${PYTHONPATH:+:$PYTHONPATH}
}

# DEVICE_TYPE (npu, cuda or cpu) and DEVICE_COUNT of this machine. torch_npu needs the CANN environment before
# it imports, so env_npu.sh is sourced first wherever an Ascend install exists.
detect_devices() {
  if [ -e /etc/Ascend/ascend_cann_install.info ] || [ -d "${CANN_INSTALL_PATH:-/usr/local/Ascend}" ]; then
    source "${test_path_dir}/env_npu.sh"
  fi
  read -r DEVICE_TYPE DEVICE_COUNT < <(python - <<'EOF'
import importlib
import torch
try:
    importlib.import_module("torch_npu")
    npus = torch.npu.device_count() if torch.npu.is_available() else 0
except ImportError:
    npus = 0
if npus:
    print("npu", npus)
elif torch.cuda.is_available():
    print("cuda", torch.cuda.device_count())
else:
    print("cpu", 1)
EOF
  )
}

fail() {
  echo "ERROR: $*" >&2
  exit 1
}

# The COCO folders and files the run reads, with a message saying where each goes.
check_data() {
  local root=${DATA_PATH:-$cur_path}
  local needed=("coco/annotations/instances_val2017.json" "coco/val2017")
  if [ "$1" == "train" ]; then
    needed=("coco/annotations/instances_train2017.json" "coco/train2017" "${needed[@]}")
  fi
  for item in "${needed[@]}"; do
    if [ ! -e "${root}/${item}" ]; then
      fail "COCO data not found: ${root}/${item} is missing. Put COCO 2017 under ${root}/coco as described in" \
           "DATA.md (coco/train2017/, coco/val2017/, coco/annotations/instances_{train,val}2017.json), or pass" \
           "--data_path=DIR with DIR/coco laid out that way."
    fi
  done
  export DATASET=$root
}

check_weight() {
  if [ "$WRITE_SMALL_INIT" == "True" ]; then
    return  # the small model's weights, written by prepare_run
  fi
  if [ ! -f "$LOAD_FROM" ]; then
    fail "Pretrained weight not found: ${LOAD_FROM}. Download glip_tiny_model_o365_goldg_cc_sbu.pth into" \
         "pretrain/ (see DATA.md) or pass --load_from=PATH."
  fi
}

# Output folders (created later, by prepare_run), process count, and the options of the small CPU model (--small).
setup_run() {
  enter_repo_root
  detect_devices
  OUTPUT_PATH=${OUTPUT_PATH:-${test_path_dir}/output/${DEVICE_ID}}
  WORK_DIR=${WORK_DIR:-$OUTPUT_PATH}
  if [ -z "$NPROC" ]; then
    if [ "$DEVICE_TYPE" == "cpu" ]; then
      NPROC=1
    else
      NPROC=$(( DEVICE_COUNT < WORLD_SIZE ? DEVICE_COUNT : WORLD_SIZE ))
    fi
  fi
  if [ "$NPROC" -lt "$WORLD_SIZE" ]; then
    echo "Note: ${WORLD_SIZE} processes wanted, running ${NPROC} on ${DEVICE_TYPE} (found ${DEVICE_COUNT})."
  fi
  EXTRA_OPTS=()
  if [ "$SMALL" == "True" ]; then
    CONFIG=tests/fixtures/small/config.yaml
    if [ "$LOAD_FROM_GIVEN" == "False" ]; then
      LOAD_FROM=${WORK_DIR}/small_init.pth
      WRITE_SMALL_INIT=True
    fi
    EXTRA_OPTS=(MODEL.LANGUAGE_BACKBONE.MODEL_PATH tests/fixtures/small/bert
                AUGMENT.MULT_MIN_SIZE_TRAIN "(96,)" INPUT.MIN_SIZE_TRAIN 96 INPUT.MAX_SIZE_TRAIN 128
                INPUT.MIN_SIZE_TEST 96 INPUT.MAX_SIZE_TEST 128 DATALOADER.NUM_WORKERS 0)
  fi
  if [ "$SYNTHETIC" == "True" ]; then
    CONFIG=configs/synthetic/glip_synthetic.yaml
    if [ "$BATCH_SIZE_GIVEN" == "False" ]; then
      BATCH_SIZE=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['SOLVER']['IMS_PER_BATCH'])" \
                   "$CONFIG")
    fi
  fi
  DEVICE_OPTS=(MODEL.DEVICE "$DEVICE_TYPE")
  LAUNCH=(python -m torch.distributed.run --nproc_per_node="$NPROC"
          --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}"
          --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}")
  CASE_NAME=${NETWORK}_bs${BATCH_SIZE}_${WORLD_SIZE}p_${CASE_KIND}
  LOG_FILE=${OUTPUT_PATH}/train_${DEVICE_ID}.log
}

# The Ascend fine-tuning settings on COCO (coco_grounding_train, LR 1e-5, steps at 67% and 89% of the run).
coco_training_options() {
  check_data train
  check_weight
  TRAIN_OPTS=(MODEL.WEIGHT "$LOAD_FROM"
              DATASETS.TRAIN '("coco_grounding_train",)' DATASETS.TEST '("coco_2017_val",)'
              MODEL.BACKBONE.FREEZE_CONV_BODY_AT -1 SOLVER.MAX_EPOCH "$MAX_EPOCH"
              TEST.IMS_PER_BATCH "$TEST_BATCH_SIZE" SOLVER.TEST_WITH_INFERENCE True
              SOLVER.FIND_UNUSED_PARAMETERS False SOLVER.BASE_LR 0.00001 SOLVER.LANG_LR 0.00001
              SOLVER.STEPS "(0.67,0.89)" DATASETS.DISABLE_SHUFFLE True MODEL.DYHEAD.SCORE_AGG "MEAN"
              TEST.EVAL_TASK detection)
}

# The synthetic recipe keeps its config's data, schedule and learning rates; weights only with --load_from,
# epochs only with --max_epoch.
synthetic_training_options() {
  TRAIN_OPTS=()
  if [ "$LOAD_FROM_GIVEN" == "True" ]; then
    check_weight
    TRAIN_OPTS=(MODEL.WEIGHT "$LOAD_FROM")
  fi
  if [ "$MAX_EPOCH_GIVEN" == "True" ]; then
    TRAIN_OPTS+=(SOLVER.MAX_EPOCH "$MAX_EPOCH")
  fi
}

# The entries of WORK_DIR that are not the launch scripts' own logs, reports and small_init.pth.
work_dir_entries() {
  (
    shopt -s nullglob dotglob
    for entry in "$WORK_DIR"/*; do
      case ${entry##*/} in
        small_init.pth | train_*.log | train_*.log.* | eval_*.log | eval_*.log.* | "${NETWORK}"_*.log \
          | train_*_loss.txt) ;;
        *) echo "${entry##*/}" ;;
      esac
    done
  )
}

# Training: resume the run WORK_DIR holds (its last_checkpoint), or with --overwrite start a new one there; a folder
# with other files and no checkpoint is refused. Sets RESUME_FLAGS for tools/train_net.py.
check_work_dir() {
  if [ "$RESUME" == "True" ] && [ "$OVERWRITE" == "True" ]; then
    fail "--resume and --overwrite contradict each other: give one of them."
  fi
  if [ -e "$WORK_DIR" ] && [ ! -d "$WORK_DIR" ]; then
    fail "--work_dir ${WORK_DIR} is a file, not a folder."
  fi
  if [ -f "${WORK_DIR}/last_checkpoint" ]; then
    local last
    last=$(cat "${WORK_DIR}/last_checkpoint")
    if [ "$OVERWRITE" == "True" ]; then
      echo "--overwrite: a new run in ${WORK_DIR}; its checkpoints (last: ${last}) are not loaded, and new ones" \
           "replace files of the same name. Nothing is deleted."
      RESUME_FLAGS=(--no-resume)
    else
      echo "Resuming the run in ${WORK_DIR} from its last checkpoint ${last} (--work_dir=NEW_DIR starts a new run;" \
           "--overwrite starts again in this folder)."
      RESUME_FLAGS=(--resume)
    fi
  elif [ "$RESUME" == "True" ]; then
    fail "--resume: ${WORK_DIR} holds no last_checkpoint to resume from. Nothing was changed."
  elif [ "$OVERWRITE" != "True" ] && [ -n "$(work_dir_entries)" ]; then
    fail "${WORK_DIR} already holds files ($(work_dir_entries | head -5 | tr '\n' ' ')...) but no last_checkpoint" \
         "to resume from. Nothing was changed. Pass --work_dir=NEW_DIR for a new run, or --overwrite to train in" \
         "this folder anyway (files of the same name are replaced; nothing is deleted)."
  fi
}

# An earlier log of the same name is kept as <log>.N (the first free N).
keep_previous_log() {
  if [ -e "$LOG_FILE" ]; then
    local n=1
    while [ -e "${LOG_FILE}.${n}" ]; do
      n=$(( n + 1 ))
    done
    mv -n "$LOG_FILE" "${LOG_FILE}.${n}" || fail "could not keep the previous log ${LOG_FILE} as ${LOG_FILE}.${n}"
    echo "The previous log is kept as ${LOG_FILE}.${n}"
  fi
}

write_small_init() {
  python -c "import sys, torch; sys.path.insert(0, 'tests/fixtures'); from make_fixtures import \
load_small_state_dict; torch.save({'model': load_small_state_dict()}, sys.argv[1])" "$LOAD_FROM" \
    || fail "could not write the small model's weights"
}

# After the checks of a run (train or eval): the output folders, the earlier log kept, the small model's weights.
# With --dry_run, say what would run and stop before writing anything. Nothing is ever deleted.
prepare_run() {
  if [ "$1" == "train" ]; then
    check_work_dir
  fi
  if [ "$DRY_RUN" == "True" ]; then
    local flags=""
    if [ "$1" == "train" ]; then
      flags=" (tools/train_net.py ${RESUME_FLAGS[*]:-without --resume or --no-resume})"
    fi
    echo "Dry run: the checks passed; would ${1} in WORK_DIR=${WORK_DIR}${flags}, logs in ${OUTPUT_PATH}." \
         "Nothing was written."
    exit 0
  fi
  mkdir -p "$OUTPUT_PATH" "$WORK_DIR" || fail "could not create ${OUTPUT_PATH} and ${WORK_DIR}"
  keep_previous_log
  if [ "$WRITE_SMALL_INIT" == "True" ]; then
    write_small_init
  fi
}

# The small models (--synthetic, --small) on a CPU keep PyTorch's thread default, which is faster on an idle machine
# (0.69 against 1.1 s per synthetic iteration on 2 cores), and say how to cope with a busy one: there two OpenMP
# thread pools fight, and one thread ran 4.3 times faster (README, "A busy machine").
cpu_thread_default() {
  if [ "$DEVICE_TYPE" == "cpu" ] && [ -z "${OMP_NUM_THREADS:-}" ] \
     && { [ "$SYNTHETIC" == "True" ] || [ "$SMALL" == "True" ]; }; then
    echo "CPU threads: PyTorch's default, one per core ($(nproc 2>/dev/null || echo '?')). If other jobs share" \
         "these cores, OMP_NUM_THREADS=1 copes better (README, 'A busy machine')."
  fi
}

# tools/train_net.py on the devices found, then evaluation (TEST.AFTER_TRAINING); output in LOG_FILE.
launch_training() {
  if [ "$SYNTHETIC" == "True" ]; then
    synthetic_training_options
  else
    coco_training_options
  fi
  prepare_run train
  local early_stop=()
  if [ "${EARLY_STOP_ITERATION:--1}" -gt 0 ]; then
    early_stop=(--early_stop_iteration "$EARLY_STOP_ITERATION")
  fi
  cpu_thread_default
  echo "Training ${CONFIG} with ${NPROC} process(es) on ${DEVICE_TYPE}; full log: ${LOG_FILE#"${cur_path}/"}"
  start_time=$(date +%s)
  # Everything goes to the log; the terminal gets a progress line (test/show_progress.py).
  "${LAUNCH[@]}" tools/train_net.py \
    --config-file "$CONFIG" \
    --skip-test \
    --override_output_dir "$WORK_DIR" "${RESUME_FLAGS[@]}" \
    "${early_stop[@]}" \
    "${TRAIN_OPTS[@]}" \
    SOLVER.IMS_PER_BATCH "$BATCH_SIZE" SOLVER.USE_AMP "$USE_AMP" SOLVER.LOG_PERIOD 1 \
    TEST.DURING_TRAINING False TEST.AFTER_TRAINING True TEST.SUBSET "$EVAL_SUBSET" \
    "${DEVICE_OPTS[@]}" "${EXTRA_OPTS[@]}" 2>&1 \
    | tee "$LOG_FILE" | python -u "${test_path_dir}/show_progress.py"
  run_status=${PIPESTATUS[0]}
  end_time=$(date +%s)
  if [ "$SYNTHETIC" == "True" ] && [ "$run_status" == 0 ]; then
    draw_synthetic_predictions
  fi
}

# A few validation images with true (green) and predicted (red) boxes, next to the loss curve in WORK_DIR.
draw_synthetic_predictions() {
  local root=datasets/synthetic
  python tools/draw_detections.py --ann-file "$root/annotations/val.json" --img-dir "$root/val" \
    --results "$WORK_DIR/inference/synthetic_val/bbox.json" --out "$WORK_DIR/val_images" --num 4 \
    >> "$LOG_FILE" 2>&1 || echo "Drawing the validation images failed; see $LOG_FILE" >&2
}

# tools/test_grounding_net.py on coco_2017_val (COCO detection AP with the class-name prompt).
launch_eval() {
  check_weight
  local data_opts=()
  if [ "$SYNTHETIC" == "True" ]; then
    data_opts=(TEST.EVAL_TASK detection)
  else
    check_data eval
    data_opts=(DATASETS.TEST '("coco_2017_val",)' MODEL.DYHEAD.SCORE_AGG "MEAN" TEST.EVAL_TASK detection)
  fi
  LOG_FILE=${OUTPUT_PATH}/eval_${DEVICE_ID}.log
  prepare_run eval
  start_time=$(date +%s)
  "${LAUNCH[@]}" tools/test_grounding_net.py \
    --config-file "$CONFIG" \
    --weight "$LOAD_FROM" \
    "${data_opts[@]}" TEST.IMS_PER_BATCH "$BATCH_SIZE" TEST.SUBSET "$EVAL_SUBSET" \
    MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS False OUTPUT_DIR "$WORK_DIR" "${DEVICE_OPTS[@]}" "${EXTRA_OPTS[@]}" \
    > "$LOG_FILE" 2>&1
  run_status=$?
  end_time=$(date +%s)
}

# The COCO metrics table of the last evaluation in the log.
print_coco_metrics() {
  local table
  table=$(grep -a -E "^ Average (Precision|Recall) " "$LOG_FILE" | tail -12)
  if [ -n "$table" ]; then
    echo "------------------ COCO bbox metrics (validation) ------------------"
    echo "$table"
  fi
}

# A file shown relative to the repository root when it lies inside it.
shown_path() {
  echo "${1#"${cur_path}/"}"
}

# A validation image and the names of its annotated categories ("red circle. blue square"), tab-separated.
demo_example() {
  python - "$1" "$2" <<'EOF'
import json, os, sys
with open(sys.argv[1]) as f:
    data = json.load(f)
names = {c["id"]: c["name"] for c in data["categories"]}
for image in data["images"]:
    ids = list(dict.fromkeys(a["category_id"] for a in data["annotations"] if a["image_id"] == image["id"]))
    if ids:
        print(os.path.join(sys.argv[2], image["file_name"]) + "\t" + ". ".join(names[i] for i in ids))
        break
EOF
}

# Where the run's files are, and the demo command to try the trained weights.
print_outputs() {
  echo "------------------ Outputs ------------------"
  echo "Log:                 $(shown_path "$LOG_FILE")"
  local weight=""
  if [ -f "${WORK_DIR}/last_checkpoint" ]; then
    weight=${WORK_DIR}/$(cat "${WORK_DIR}/last_checkpoint")
    echo "Weights:             $(shown_path "$weight")"
  fi
  if [ -f "${WORK_DIR}/loss_curve.png" ]; then
    echo "Loss curve:          $(shown_path "${WORK_DIR}/loss_curve.png")"
  fi
  if [ -d "${WORK_DIR}/val_images" ]; then
    echo "Validation pictures: $(shown_path "${WORK_DIR}/val_images")/ (true boxes green, predictions red)"
  fi
  if [ "$1" == "train" ] && [ -n "$weight" ]; then
    print_demo_command "$weight"
  fi
}

# The demo on a validation image of the run's dataset, prompted with the names of the objects in it.
print_demo_command() {
  local root=${DATASET:-$cur_path}
  local ann_file=${root}/coco/annotations/instances_val2017.json img_dir=${root}/coco/val2017
  if [ "$SYNTHETIC" == "True" ]; then
    ann_file=datasets/synthetic/annotations/val.json img_dir=datasets/synthetic/val
  fi
  local example
  example=$(demo_example "$ann_file" "$img_dir" 2>/dev/null)
  if [ -n "$example" ]; then
    local words=(python tools/demo.py "$(shown_path "${example%%$'\t'*}")" "${example#*$'\t'}"
                 --config-file "$CONFIG" --weight "$(shown_path "$1")" --out demo.png "${EXTRA_OPTS[@]}")
    local command="" word
    for word in "${words[@]}"; do
      command+="$(shell_word "$word") "
    done
    echo "Try the model:       ${command% }"
  fi
}

# One argument written so that the shell reads it back unchanged: as is when plain, else in single quotes.
shell_word() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,+-]+$ ]]; then
    echo -n "$1"
  else
    echo -n "'${1//\'/\'\\\'\'}'"
  fi
}

# Throughput, AP and duration from the log: printed, and written to <case>.log and <case>_perf_report.log.
report() {
  e2e_time=$(( end_time - start_time ))
  if [ "$1" == "eval" ]; then
    # "Total inference time: ... (S s / img per device, on N devices)" -> N / S images per second.
    fps=$(grep -a "Total inference time" "$LOG_FILE" | tail -1 \
          | awk -F'[(]' '{split($2, a, " "); split($0, b, "on "); n = b[2] + 0
                          if (a[1] > 0) printf("%.3f", n / a[1])}')
  else
    # The trainer's "Training throughput: X images/s (N images in T s ...; warm-up left out)": images over the
    # summed iteration time, not the mean of per-iteration rates (which slow iterations barely move).
    throughput=$(grep -a "Training throughput: " "$LOG_FILE" | tail -1 | sed 's/.*Training throughput: //')
    fps=${throughput%% *}
  fi
  accuracy=$(grep -a ".inference INFO: OrderedDict" "$LOG_FILE" | tail -1 | awk -F "'AP', " '{print $2}' \
             | awk -F ")" '{print $1}')
  training_time=$(grep -a "time: " "$LOG_FILE" | awk -F "time: " '{print $2}' | awk '{a += $1} END {printf("%.3f", a)}')
  if [ "$1" == "train" ]; then
    grep -a "loss: " "$LOG_FILE" | awk -F "loss: " '{print $2}' | awk '{print $1}' \
      > "${OUTPUT_PATH}/train_${CASE_NAME}_loss.txt"
  fi

  print_coco_metrics
  print_outputs "$1"
  echo "------------------ Final result ------------------"
  if [ -n "${throughput:-}" ]; then
    echo "Training throughput: ${throughput}"
  fi
  echo "Final validation bbox AP : ${accuracy} (COCO AP@[.50:.95]; reported below as Final Train Accuracy)"
  echo "Final Performance images/sec : ${fps}"
  echo "Final Train Accuracy : ${accuracy}"
  echo "E2E Training Duration sec : ${e2e_time}"

  {
    echo "Network = ${NETWORK}"
    echo "RankSize = ${NPROC}"
    echo "BatchSize = ${BATCH_SIZE}"
    echo "DeviceType = ${DEVICE_TYPE} $(uname -m)"
    echo "CaseName = ${CASE_NAME}"
    echo "TrainAccuracy = ${accuracy}"
  } > "${OUTPUT_PATH}/${CASE_NAME}.log"
  {
    echo "ActualFPS = ${fps}"
    echo "TrainingTime = ${training_time}"
    echo "E2ETrainingTime = ${e2e_time}"
  } > "${OUTPUT_PATH}/${CASE_NAME}_perf_report.log"

  if [ "$run_status" -ne 0 ]; then
    echo "The run failed (exit status ${run_status}); see ${LOG_FILE}:" >&2
    tail -20 "$LOG_FILE" >&2
    exit "$run_status"
  fi
}
