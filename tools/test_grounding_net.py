"""Evaluate a GLIP model on the detection datasets of DATASETS.TEST (COCO box AP with the class-name prompt).

    python tools/test_grounding_net.py --config-file CONFIG --weight CHECKPOINT [--task_config T1,T2] KEY VALUE ...

Several processes (torchrun) split the images; rank 0 gathers the detections and evaluates. Results go to
OUTPUT_DIR/inference/<dataset>/ (OUTPUT_DIR/eval/<weight name>/inference/<dataset>/ with --weight).
"""
import argparse
import os

from torch import nn

from maskrcnn_benchmark.config import load_config
from maskrcnn_benchmark.engine.evaluation import evaluate_test_sets
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.utils.checkpoint import DetectronCheckpointer, missing_weights_error
from maskrcnn_benchmark.utils.comm import get_local_rank, get_rank, synchronize
from maskrcnn_benchmark.utils.device import init_distributed, resolve_device
from maskrcnn_benchmark.utils.logger import setup_logger


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The official command-line flags; trailing KEY VALUE pairs override the config."""
    parser = argparse.ArgumentParser(description="PyTorch Detection to Grounding Inference")
    parser.add_argument("--config-file", default="configs/pretrain/glip_Swin_T_O365_GoldG.yaml", metavar="FILE",
                        help="path to config file")
    parser.add_argument("--weight", default=None, metavar="FILE", help="checkpoint to evaluate (else MODEL.WEIGHT)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by torch.distributed.launch; torchrun sets LOCAL_RANK instead")
    parser.add_argument("--world-size", default=1, type=int, help="number of distributed processes")
    parser.add_argument("--dist-url", default="env://", help="url used to set up distributed inference")
    parser.add_argument("--task_config", default=None, help="comma-separated configs, each evaluated in turn")
    parser.add_argument("opts", help="Modify config options using the command-line", default=None,
                        nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def check_dist_url(dist_url: str) -> None:
    """Refuse a --dist-url other than env://: the process group is set up from torchrun's environment variables."""
    if dist_url != "env://":
        raise SystemExit(f"--dist-url {dist_url}: only env:// is supported (the process group comes from torchrun's "
                         f"RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT). Launch with torchrun and drop --dist-url.")


def check_weights_given(weight: str | None, cfg) -> None:
    """Refuse to evaluate a model that no weight file initialises, unless MODEL.ALLOW_MISSING_WEIGHTS asks to."""
    resumable = bool(cfg.OUTPUT_DIR) and os.path.exists(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if not (weight or cfg.MODEL.WEIGHT or resumable or cfg.MODEL.ALLOW_MISSING_WEIGHTS):
        raise missing_weights_error(f"Nothing to evaluate: no --weight, MODEL.WEIGHT is empty and OUTPUT_DIR "
                                    f"{cfg.OUTPUT_DIR!r} has no last_checkpoint",
                                    "Pass --weight CHECKPOINT (or MODEL.WEIGHT CHECKPOINT)")


def main(argv: list[str] | None = None, model: nn.Module | None = None) -> dict[str, object]:
    """Evaluate as the command line says; `model` replaces the built and loaded detector (for tests)."""
    args = parse_args(argv)
    check_dist_url(args.dist_url)
    cfg = load_config(args.config_file, args.opts or [])
    device = resolve_device(cfg.MODEL.DEVICE, get_local_rank() if args.local_rank is None else args.local_rank)
    # The backend follows the device (nccl, hccl or gloo), as in training.
    distributed = init_distributed(device, cfg.SOLVER.DDP_TIMEOUT_MINUTES)
    synchronize()

    log_dir = cfg.OUTPUT_DIR
    if args.weight:
        log_dir = os.path.join(log_dir, "eval", os.path.splitext(os.path.basename(args.weight))[0])
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    logger = setup_logger("maskrcnn_benchmark", log_dir, get_rank())
    logger.info(args)
    logger.info("Using %d processes", int(os.environ.get("WORLD_SIZE", "1")))
    logger.info(cfg)

    if model is None:
        check_weights_given(args.weight, cfg)
        model = build_detection_model(cfg)
        model.to(device)
        checkpointer = DetectronCheckpointer(cfg, model, save_dir=cfg.OUTPUT_DIR)
        # As official: --weight is loaded as given; otherwise OUTPUT_DIR's last checkpoint wins over MODEL.WEIGHT.
        if args.weight:
            checkpointer.load(args.weight, force=True)
        else:
            checkpointer.load(cfg.MODEL.WEIGHT)

    if not args.task_config:
        return evaluate_test_sets(cfg, model, device, distributed, log_dir)
    results = {}
    for task_config in args.task_config.split(","):
        task_cfg = cfg.clone()
        task_cfg.defrost()
        task_cfg.merge_from_file(task_config)
        task_cfg.merge_from_list(args.opts)
        results.update(evaluate_test_sets(task_cfg, model, device, distributed, log_dir))
    return results


if __name__ == "__main__":
    main()
