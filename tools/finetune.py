"""Fine-tune GLIP on several tasks, shot settings and seeds (the official tools/finetune.py interface).

    python tools/finetune.py --config-file BASE.yaml --ft-tasks "configs/odinw_13/*.yaml" \
        [--custom_shot_and_epoch_and_general_copy SHOT_EPOCH_COPY[,SHOT_EPOCH_COPY...]] [--shuffle_seeds 3,30] \
        [--skip_optimizer_resume] [--evaluate_only_best_on_test] [--push_both_val_and_test] [--skip-test]
        [--use_prepared_data] KEY VALUE...

For each task config (comma-separated globs, each sorted), shot setting and seed: the base config, then the task
config, then KEY VALUE pairs; SHOT_EPOCH_COPY sets DATASETS.FEW_SHOT, SOLVER.MAX_EPOCH and DATASETS.GENERAL_COPY
(10000 shots: zero-shot, the weights are evaluated untrained, as officially); a seed sets DATASETS.SHUFFLE_SEED.
With --use_prepared_data the k-shot subsets are not drawn: the run trains on the task's prepared split
<TRAIN>_<shots>_<seed> and validates on <TEST>_<val shots>_<seed> (names the ODinW configs register, e.g. train_1_3
and val_1_3; SHOT_EPOCH_COPY_VALSHOT gives the validation shots, else the training shots), as officially;
SOLVER.TUNING_HIGHLEVEL_OVERRIDE's preset (full, linear_prob, language_prompt_v1..v4) sets the freeze keys. Each
run trains in OUTPUT_DIR/ft_task_<n>[_<shots>shot][_seed_<seed>] (resumed when it holds a checkpoint) and is
evaluated on DATASETS.TEST. The runs' APs are written to OUTPUT_DIR/finetune_results.csv and .md.
Several settings in one launch are this port's extension; a single one gives the official folder names.
"""
import argparse
import csv
import glob
import logging
import os
import shutil
import sys
from typing import Any, NamedTuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # train_net

import train_net  # noqa: E402  (tools/ is on sys.path when this script runs)

from maskrcnn_benchmark.config import get_cfg_defaults  # noqa: E402
from maskrcnn_benchmark.config.paths_catalog import DatasetCatalog  # noqa: E402
from maskrcnn_benchmark.config.tuning_presets import apply_tuning_preset  # noqa: E402
from maskrcnn_benchmark.data.build import dataset_suffix  # noqa: E402
from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: E402
from maskrcnn_benchmark.utils.checkpoint import DetectronCheckpointer, load_state_dict, read_checkpoint  # noqa: E402
from maskrcnn_benchmark.utils.comm import get_local_rank, get_rank, is_main_process, synchronize  # noqa: E402
from maskrcnn_benchmark.utils.device import init_distributed, resolve_device, set_current_device  # noqa: E402
from maskrcnn_benchmark.utils.logger import setup_logger  # noqa: E402
from maskrcnn_benchmark.utils.miscellaneous import mkdir, save_config, seed_all  # noqa: E402

logger = logging.getLogger("maskrcnn_benchmark.finetune")
ZERO_SHOT = 10000  # the official "shots" value that means: evaluate the weights without training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The official flags (--keep_testing is refused: it opened an interactive debugger)."""
    parser = argparse.ArgumentParser(description="GLIP fine-tuning over tasks, shots and seeds")
    parser.add_argument("--config-file", default="", metavar="FILE", help="base config file")
    parser.add_argument("--ft-tasks", default="", help="task config files: comma-separated globs")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None)
    parser.add_argument("--skip-train", dest="skip_train", action="store_true", help="evaluate without training")
    parser.add_argument("--skip-test", dest="skip_test", action="store_true", help="do not evaluate on DATASETS.TEST")
    parser.add_argument("--skip_optimizer_resume", action="store_true",
                        help="resume a run's weights without its optimizer and schedule")
    parser.add_argument("--custom_shot_and_epoch_and_general_copy", default=None,
                        help="SHOT_EPOCH_COPY, e.g. 1_200_8 (several: comma-separated)")
    parser.add_argument("--shuffle_seeds", default=None, help="comma-separated DATASETS.SHUFFLE_SEED values")
    parser.add_argument("--evaluate_only_best_on_test", action="store_true",
                        help="evaluate model_best.pth (kept by TEST.DURING_TRAINING) instead of the final weights")
    parser.add_argument("--push_both_val_and_test", action="store_true",
                        help="the results table also gives the best validation AP and its iteration")
    parser.add_argument("--use_prepared_data", action="store_true",
                        help="train and validate on the prepared k-shot splits the task config registers "
                             "(<TRAIN>_<shots>_<seed>, <TEST>_<val shots>_<seed>) instead of drawing the shots")
    parser.add_argument("--keep_testing", action="store_true", help="official interactive testing: refused")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.keep_testing:
        parser.error("--keep_testing opened the official interactive debugger after each test and is not ported; "
                     "evaluate other sets with tools/test_grounding_net.py --task_config instead.")
    if not args.config_file:
        parser.error("--config-file is required (the base config, e.g. configs/pretrain/glip_Swin_T_O365_GoldG.yaml)")
    return args


def task_configs(ft_tasks: str, config_file: str) -> list[str]:
    """The task config files: each comma-separated glob's matches, sorted; the base config when none given."""
    if not ft_tasks:
        return [config_file]
    files = []
    for pattern in ft_tasks.split(","):
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"--ft-tasks: no config file matches {pattern!r}.")
        files.extend(matches)
    return files


class ShotSetting(NamedTuple):
    """One SHOT_EPOCH_COPY[_VALSHOT] of --custom_shot_and_epoch_and_general_copy."""

    shots: int
    epochs: int
    general_copy: int
    val_shots: int  # the prepared validation split's shots (--use_prepared_data); the training shots by default


def shot_settings(value: str | None, use_prepared_data: bool = False) -> list[ShotSetting | None]:
    """The SHOT_EPOCH_COPY settings (SHOT_EPOCH_COPY_VALSHOT with prepared data); [None] keeps the task
    configs' own."""
    if not value:
        return [None]
    settings = []
    for item in value.split(","):
        parts = item.split("_")
        if len(parts) == 4 and not use_prepared_data:
            raise ValueError(f"--custom_shot_and_epoch_and_general_copy {item!r}: a fourth number (the validation "
                             "shots) names a prepared validation split; add --use_prepared_data or drop it.")
        if len(parts) not in (3, 4) or not all(part.isdigit() for part in parts):
            raise ValueError(f"--custom_shot_and_epoch_and_general_copy {item!r}: expected SHOT_EPOCH_COPY, three "
                             "whole numbers joined by '_' (e.g. 1_200_8 for 1 shot, 200 epochs, 8 copies; with "
                             "--use_prepared_data a fourth gives the validation shots).")
        numbers = [int(part) for part in parts]
        settings.append(ShotSetting(*numbers[:3], val_shots=numbers[3] if len(numbers) == 4 else numbers[0]))
    return settings


def seeds_of(value: str | None) -> list[int | None]:
    """The --shuffle_seeds values; [None] keeps the task configs' DATASETS.SHUFFLE_SEED."""
    if not value:
        return [None]
    try:
        return [int(seed) for seed in value.split(",")]
    except ValueError:
        raise ValueError(f"--shuffle_seeds {value!r}: expected comma-separated whole numbers, e.g. 3,30.") from None


def run_config(args: argparse.Namespace, task_file: str, task_id: int, shots: ShotSetting | None,
               seed: int | None, several_shots: bool):
    """One run's config: base, task file, KEY VALUEs, shot setting, seed, output folder, tuning preset."""
    cfg = get_cfg_defaults()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    output_dir = cfg.OUTPUT_DIR
    cfg.merge_from_file(task_file)
    cfg.merge_from_list(args.opts or [])
    folder = f"ft_task_{task_id}"
    if shots is not None:
        cfg.SOLVER.MAX_EPOCH, cfg.DATASETS.GENERAL_COPY = shots.epochs, shots.general_copy
        if not args.use_prepared_data:
            cfg.DATASETS.FEW_SHOT = shots.shots
        folder += f"_{shots.shots}shot" if several_shots else ""
    if seed is not None:
        cfg.DATASETS.SHUFFLE_SEED = seed
        folder += f"_seed_{seed}"
    if args.use_prepared_data and shots is not None and shots.shots not in (0, ZERO_SHOT):
        use_prepared_splits(cfg, shots)
    cfg.merge_from_list(args.opts or [])  # the command line wins, as officially
    cfg.MODEL.WEIGHT = resolve_last_checkpoint(cfg.MODEL.WEIGHT)
    cfg.OUTPUT_DIR = os.path.join(output_dir, folder)
    apply_tuning_preset(cfg)
    return cfg


def use_prepared_splits(cfg, shots: ShotSetting) -> None:
    """Point DATASETS.TRAIN and TEST at the prepared k-shot splits of the run's shots and DATASETS.SHUFFLE_SEED.

    Officially the split's seed was the task config's even when --shuffle_seeds gave another, so that the folder
    named one seed and the data came from another; here the run's seed names both.
    """
    seed = cfg.DATASETS.SHUFFLE_SEED
    cfg.DATASETS.TRAIN = tuple(f"{name}_{shots.shots}_{seed}" for name in cfg.DATASETS.TRAIN[:1])
    cfg.DATASETS.TEST = tuple(f"{name}_{shots.val_shots}_{seed}" for name in cfg.DATASETS.TEST[:1])
    if shots.val_shots in (1, 3):
        cfg.DATASETS.GENERAL_COPY_TEST = 4  # as officially: so tiny validation sets have an image per device
    splits = [(cfg.DATASETS.TRAIN[0], True), (cfg.DATASETS.TEST[0], False)]
    missing = [name for name, is_train in splits if name not in cfg.DATASETS.REGISTER
               and name + dataset_suffix(cfg, is_train) not in DatasetCatalog.DATASETS]
    if missing:
        raise ValueError(f"--use_prepared_data: no dataset {' or '.join(map(repr, missing))} is registered (the "
                         f"task config's DATASETS.REGISTER has {sorted(cfg.DATASETS.REGISTER)}). Prepare that split "
                         "and register it (DATA.md, ODinW), or drop --use_prepared_data to draw the shots with "
                         "DATASETS.FEW_SHOT.")


def resolve_last_checkpoint(weight: str) -> str:
    """A MODEL.WEIGHT ending in model_last_checkpoint.pth names the file its folder's last_checkpoint points to."""
    if "model_last_checkpoint.pth" not in weight:
        return weight
    pointer = weight.replace("model_last_checkpoint.pth", "last_checkpoint")
    if not os.path.isfile(pointer):
        raise FileNotFoundError(f"MODEL.WEIGHT {weight!r} asks for the last checkpoint, but {pointer} is missing.")
    with open(pointer) as f:
        return weight.replace("model_last_checkpoint.pth", f.read().strip())


def evaluate(cfg, model: torch.nn.Module, distributed: bool, best_only: bool) -> dict[str, float]:
    """AP on each DATASETS.TEST set, of model_best.pth when `best_only` (else of `model` as trained)."""
    if best_only:
        path = os.path.join(cfg.OUTPUT_DIR, "model_best.pth")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--evaluate_only_best_on_test: {path} does not exist; it is written by the "
                                    "evaluations during training: set TEST.DURING_TRAINING True.")
        load_state_dict(model, read_checkpoint(path)["model"], source=path)
    return train_net.run_test(cfg, model, distributed)


def untrained_model(cfg, device: torch.device) -> torch.nn.Module:
    """The model with MODEL.WEIGHT loaded, for zero-shot evaluation; the weights are kept as model_best.pth."""
    model = build_detection_model(cfg).to(device)
    weight = train_net.find_weight(cfg.MODEL.WEIGHT) if cfg.MODEL.WEIGHT else ""
    DetectronCheckpointer(cfg, model, save_dir="").load(weight, force=True)
    if weight and is_main_process():
        shutil.copyfile(weight, os.path.join(cfg.OUTPUT_DIR, "model_best.pth"))
    return model


def run_one(cfg, device: torch.device, distributed: bool, args: argparse.Namespace, zero_shot: bool) -> dict:
    """Train (or not, zero-shot) and evaluate one run; returns its row of the results table."""
    mkdir(cfg.OUTPUT_DIR)
    if is_main_process():
        save_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yml"))
    seed_all(cfg.SOLVER.SEED + get_rank())
    if zero_shot:
        model = untrained_model(cfg, device)
    else:
        model = train_net.train(cfg, device, distributed, skip_optimizer_resume=args.skip_optimizer_resume)
    synchronize()
    results = {} if args.skip_test else evaluate(cfg, model, distributed, args.evaluate_only_best_on_test and
                                                 not zero_shot)
    row: dict[str, Any] = {"output_dir": cfg.OUTPUT_DIR, "shots": cfg.DATASETS.FEW_SHOT,
                           "epochs": cfg.SOLVER.MAX_EPOCH, "seed": cfg.DATASETS.SHUFFLE_SEED}
    if args.push_both_val_and_test:
        row.update(best_validation(cfg.OUTPUT_DIR))
    row.update({f"AP {name}": ap for name, ap in results.items()})
    return row


def best_validation(output_dir: str) -> dict[str, Any]:
    """The best validation AP and its iteration, from model_best.pth (empty cells when there is none)."""
    path = os.path.join(output_dir, "model_best.pth")
    best = read_checkpoint(path).get("best_eval", {}) if os.path.isfile(path) else {}
    return {"val AP (best)": best.get("ap", ""), "best iteration": best.get("iteration", "")}


def write_results(rows: list[dict[str, Any]], output_dir: str) -> tuple[str, str]:
    """finetune_results.csv and finetune_results.md in `output_dir`: one row per run; returns their paths."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    csv_path = os.path.join(output_dir, "finetune_results.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    cell = lambda value: f"{value:.4f}" if isinstance(value, float) else str(value)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    md_path = os.path.join(output_dir, "finetune_results.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, md_path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse the command line; train and evaluate every task x shot setting x seed; write the results table."""
    args = parse_args(argv)
    tasks = task_configs(args.ft_tasks, args.config_file)
    settings = shot_settings(args.custom_shot_and_epoch_and_general_copy, args.use_prepared_data)
    seeds = seeds_of(args.shuffle_seeds)
    local_rank = get_local_rank() if args.local_rank is None else args.local_rank
    base = run_config(args, tasks[0], 1, settings[0], seeds[0], len(settings) > 1)
    device = resolve_device(base.MODEL.DEVICE, local_rank)
    set_current_device(device)
    distributed = init_distributed(device, base.SOLVER.DDP_TIMEOUT_MINUTES)
    output_dir = os.path.dirname(base.OUTPUT_DIR)
    mkdir(output_dir)
    setup_logger("maskrcnn_benchmark", output_dir, get_rank())
    rows = []
    for task_id, task_file in enumerate(tasks, 1):
        for shots in settings:
            for seed in seeds:
                cfg = run_config(args, task_file, task_id, shots, seed, len(settings) > 1)
                cfg.MODEL.DEVICE = str(device)
                cfg.freeze()
                logger.info("Fine-tuning task %d (%s) in %s", task_id, task_file, cfg.OUTPUT_DIR)
                zero_shot = args.skip_train or (shots is not None and shots.shots == ZERO_SHOT)
                rows.append({"task": os.path.splitext(os.path.basename(task_file))[0],
                             **run_one(cfg, device, distributed, args, zero_shot)})
    if is_main_process():
        for path in write_results(rows, output_dir):
            print(f"Results: {path}")
    if distributed:
        torch.distributed.destroy_process_group()
    return rows


if __name__ == "__main__":
    main()
