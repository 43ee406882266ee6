"""Training throughput of full-size GLIP-T (random weights) at 800x1333, with the trainer's own step.

Usage: python benchmarks/bench_train.py [--device auto|cpu|cuda|npu] [--batch-size 1] [--amp] [--iters 5]
       [--warmup 2] [--size 800 1333] [--threads N]
One step is what tools/train_net.py does per iteration: forward under autocast (--amp: float16 with loss scaling
on CUDA/NPU, bfloat16 on CPU), backward, AdamW with full-model gradient clipping (the GLIP-T solver settings) and
the EMA update. Prints the images/s over --iters timed steps after --warmup steps, and the peak memory (allocator
peak on CUDA/NPU, process peak RSS on CPU).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_model import coco_prompt  # noqa: E402
from maskrcnn_benchmark.config import get_cfg_defaults  # noqa: E402
from maskrcnn_benchmark.data import CollatedBatch  # noqa: E402
from maskrcnn_benchmark.engine.trainer import forward_losses, optimizer_step  # noqa: E402
from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: E402
from maskrcnn_benchmark.solver import make_optimizer  # noqa: E402
from maskrcnn_benchmark.structures.bounding_box import BoxList  # noqa: E402
from maskrcnn_benchmark.structures.image_list import to_image_list  # noqa: E402
from maskrcnn_benchmark.utils.amp import make_grad_scaler  # noqa: E402
from maskrcnn_benchmark.utils.device import peak_memory_mb, resolve_device, set_current_device, \
    synchronize_device  # noqa: E402
from maskrcnn_benchmark.utils.ema import ModelEma  # noqa: E402

# Three boxes (x1, y1, x2, y2) in an 800x1333 image and their COCO labels (person, car, dog).
BOXES = ((10.0, 20.0, 300.0, 400.0), (400.0, 100.0, 700.0, 500.0), (50.0, 500.0, 200.0, 780.0))
LABELS = (1, 3, 18)


def synthetic_batch(batch_size: int, height: int, width: int) -> CollatedBatch:
    """A training batch of random images, each with three boxes grounded in the COCO-80 caption."""
    caption, label_to_tokens = coco_prompt()
    images, targets, rows = [], [], []
    for _ in range(batch_size):
        images.append(torch.randn(3, height, width))
        target = BoxList(torch.tensor(BOXES), (width, height))
        target.add_field("labels", torch.tensor(LABELS))
        targets.append(target)
        for label in LABELS:
            row = torch.zeros(256)
            row[label_to_tokens[label]] = 1.0
            rows.append(row)
    return CollatedBatch(to_image_list(images, size_divisible=32), tuple(targets), tuple(range(batch_size)),
                         torch.stack(rows), None, None, [caption] * batch_size, None)


def main() -> None:
    """Parse arguments, build GLIP-T and its optimizer, time the training steps, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="mixed precision (SOLVER.USE_AMP)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    set_current_device(device)

    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(ROOT / "configs/pretrain/glip_Swin_T_O365_GoldG.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", str(device), "SOLVER.USE_AMP", str(args.amp)])
    torch.manual_seed(0)
    model = build_detection_model(cfg).to(device).train()
    optimizer = make_optimizer(cfg, model)
    scaler = make_grad_scaler(device.type, args.amp)
    model_ema = ModelEma(model, cfg.SOLVER.MODEL_EMA) if cfg.SOLVER.MODEL_EMA > 0 else None
    batch = synthetic_batch(args.batch_size, *args.size)

    times = []
    for step in range(args.warmup + args.iters):
        synchronize_device(device)
        start = time.perf_counter()
        losses = forward_losses(model, batch, device, args.amp)
        optimizer_step(sum(losses.values()), optimizer, scaler)
        if model_ema is not None:
            model_ema.update(model)
        synchronize_device(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(f"GLIP-T train {device} {'amp' if args.amp else 'fp32'} batch {args.batch_size} image "
          f"{args.size[0]}x{args.size[1]}: {args.batch_size / seconds:.3f} images/s (median step {seconds:.3f} s "
          f"over {len(times)} steps), peak memory {peak_memory_mb(device) / 1024:.2f} GB")


if __name__ == "__main__":
    main()
