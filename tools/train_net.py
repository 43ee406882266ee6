"""Train GLIP (the official tools/train_net.py interface).

    python tools/train_net.py --config-file CONFIG [--override_output_dir DIR] [--skip-test]
        [--early_stop_iteration N] [--resume] [--use-tensorboard] KEY VALUE ...
    torchrun --nproc_per_node N tools/train_net.py ...          (one process per device; multi-node: torchrun
                                                                   --nnodes/--node_rank/--rdzv_endpoint)

The device comes from MODEL.DEVICE ("cuda" falls back to an NPU or the CPU when CUDA is absent; "auto", "cpu",
"npu" also accepted); several processes use DDP over nccl (CUDA), hccl (NPU) or gloo (CPU). A run restarts from
OUTPUT_DIR's last checkpoint when there is one (as officially); --resume insists on it, --no-resume starts from
MODEL.WEIGHT anyway (writing over the folder's checkpoints of the same name, deleting nothing). TEST.AFTER_TRAINING
evaluates the trained model on DATASETS.TEST; --skip-test is accepted for compatibility and changes nothing (the
official GLIP script ignores it as well).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maskrcnn_benchmark.config import get_cfg_defaults  # noqa: E402
from maskrcnn_benchmark.engine.evaluation import evaluate_test_sets, headline_metrics  # noqa: E402
from maskrcnn_benchmark.engine.train_loop import Trainer, checkpoint_period_of, find_weight  # noqa: E402,F401
from maskrcnn_benchmark.utils.comm import get_local_rank, get_rank, get_world_size  # noqa: E402
from maskrcnn_benchmark.utils.device import init_distributed, resolve_device, set_current_device  # noqa: E402
from maskrcnn_benchmark.utils.logger import setup_logger  # noqa: E402
from maskrcnn_benchmark.utils.metric_logger import summary_writer_class  # noqa: E402
from maskrcnn_benchmark.utils.miscellaneous import mkdir, save_config, seed_all  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The official flags, Ascend's --early_stop_iteration, and --resume."""
    parser = argparse.ArgumentParser(description="PyTorch Object Detection Training")
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by torch.distributed.launch; torchrun sets LOCAL_RANK instead")
    parser.add_argument("--skip-test", dest="skip_test", action="store_true",
                        help="accepted for compatibility; evaluation after training follows TEST.AFTER_TRAINING")
    parser.add_argument("--use-tensorboard", dest="use_tensorboard", action="store_true",
                        help="also write TensorBoard event files to OUTPUT_DIR")
    parser.add_argument("--save_original_config", action="store_true",
                        help="copy the config file to OUTPUT_DIR/config_original.yml")
    parser.add_argument("--disable_output_distributed", action="store_true",
                        help="silence the standard output of all processes but rank 0")
    parser.add_argument("--override_output_dir", default=None, help="OUTPUT_DIR to use instead of the config's")
    parser.add_argument("--early_stop_iteration", type=int, default=-1,
                        help="stop after this many iterations (the LR schedule still spans the full run)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR's last checkpoint; fail when there is none")
    parser.add_argument("--no-resume", dest="no_resume", action="store_true",
                        help="start from MODEL.WEIGHT even when OUTPUT_DIR holds a last_checkpoint (the new run's "
                             "checkpoints replace files of the same name; nothing is deleted)")
    parser.add_argument("opts", help="Modify config options using the command-line", default=None,
                        nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def setup_config(args: argparse.Namespace, local_rank: int):
    """Defaults, then the config file, KEY VALUE pairs and --override_output_dir; MODEL.DEVICE resolved.

    Returns the frozen config and this process's device (MODEL.DEVICE then names it, e.g. "cuda:1").
    """
    cfg = get_cfg_defaults()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    if args.override_output_dir:
        cfg.OUTPUT_DIR = args.override_output_dir
    device = resolve_device(cfg.MODEL.DEVICE, local_rank)
    cfg.MODEL.DEVICE = str(device)
    cfg.freeze()
    return cfg, device


def train(cfg, device: torch.device, distributed: bool, use_tensorboard: bool = False,
          early_stop_iteration: int = -1, resume: bool = False, restart: bool = False,
          skip_optimizer_resume: bool = False) -> torch.nn.Module:
    """Build the Trainer, load the weights or resume (never with `restart`), train; returns the trained model.

    With `skip_optimizer_resume` a resume takes the checkpoint's weights only and trains from iteration 0 with a
    fresh optimizer and schedule (tools/finetune.py --skip_optimizer_resume).
    """
    trainer = Trainer.from_config(cfg, device, distributed, use_tensorboard, resume, restart, skip_optimizer_resume)
    trainer.train(early_stop_iteration)
    return trainer.module


def run_test(cfg, model: torch.nn.Module, distributed: bool) -> dict[str, float]:
    """The headline metric (box AP; Recall@1 for grounding) of `model` on each DATASETS.TEST set, on every process
    (results in OUTPUT_DIR/inference/<name>/)."""
    results = evaluate_test_sets(cfg, model, torch.device(cfg.MODEL.DEVICE), distributed, cfg.OUTPUT_DIR)
    return headline_metrics(results)


def main(argv: list[str] | None = None) -> torch.nn.Module:
    """Parse the command line, set up devices, processes and logging, train, then evaluate if asked."""
    args = parse_args(argv)
    if args.use_tensorboard:
        summary_writer_class()  # fail before any work when the optional TensorBoard is not installed
    local_rank = get_local_rank() if args.local_rank is None else args.local_rank
    cfg, device = setup_config(args, local_rank)
    set_current_device(device)
    distributed = init_distributed(device, cfg.SOLVER.DDP_TIMEOUT_MINUTES)
    if args.disable_output_distributed and get_rank() > 0:
        sys.stdout = open(os.devnull, "w")
    seed_all(cfg.SOLVER.SEED + get_rank())

    if cfg.OUTPUT_DIR:
        mkdir(cfg.OUTPUT_DIR)
    logger = setup_logger("maskrcnn_benchmark", cfg.OUTPUT_DIR, get_rank())
    logger.info(args)
    logger.info("Using %d processes on %s", get_world_size(), device)
    if args.config_file:
        logger.info("Loaded configuration file %s", args.config_file)
    logger.info("Running with config:\n%s", cfg)
    if cfg.OUTPUT_DIR:
        save_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yml"))
        if args.save_original_config and args.config_file and get_rank() == 0:
            with open(args.config_file) as source, \
                    open(os.path.join(cfg.OUTPUT_DIR, "config_original.yml"), "w") as target:
                target.write(source.read())

    model = train(cfg, device, distributed, args.use_tensorboard, args.early_stop_iteration, args.resume,
                  args.no_resume)
    if cfg.TEST.AFTER_TRAINING:
        run_test(cfg, model, distributed)
    if distributed:
        torch.distributed.destroy_process_group()
    return model


if __name__ == "__main__":
    main()
