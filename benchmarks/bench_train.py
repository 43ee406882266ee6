"""Training throughput of full-size GLIP-T (random weights) at 800x1333 with the trainer's own step, on execution
plans (default: the device's own and the reference plan).

Usage: python benchmarks/bench_train.py [--device auto|cpu|cuda|npu] [--batch-size 1] [--dtype fp32|amp]
       [--amp-dtype float16|bfloat16] [--repeat 3] [--warmup 1] [--size 800 1333] [--threads 2]
       [--plans auto reference] [--stochastic]       (--amp is --dtype amp; --paths is --plans)
One step is what tools/train_net.py does per iteration: forward under autocast (amp: float16 with loss scaling
on CUDA/NPU, bfloat16 on CPU), backward, AdamW with full-model gradient clipping (the GLIP-T solver settings) and
the EMA update. Each path runs in its own process from the same weights and batch; each prints images/s (median
of --repeat timed steps after --warmup steps) and peak memory (allocator peak on CUDA/NPU, process peak RSS on CPU),
then the time ratio and the largest loss difference between the paths, step by step. Dropout, drop-path and
DropBlock are off unless --stochastic, so that the two paths' losses can be compared.
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

from bench_model import (
    add_path_arguments,
    build_model,
    coco_prompt,
    glip_t_config,
    parse_or_run_worker,
    path_worker_arguments,  # noqa: E402
    run_path_workers,
    use_plan,
)

from maskrcnn_benchmark.data import CollatedBatch  # noqa: E402
from maskrcnn_benchmark.engine.trainer import forward_losses, optimizer_step  # noqa: E402
from maskrcnn_benchmark.solver import make_optimizer  # noqa: E402
from maskrcnn_benchmark.structures.bounding_box import BoxList  # noqa: E402
from maskrcnn_benchmark.structures.image_list import to_image_list  # noqa: E402
from maskrcnn_benchmark.utils.amp import amp_dtype, make_grad_scaler  # noqa: E402
from maskrcnn_benchmark.utils.device import (
    peak_memory_mb,
    resolve_device,
    set_current_device,
    synchronize_device,  # noqa: E402
)
from maskrcnn_benchmark.utils.ema import ModelEma  # noqa: E402

# Three boxes (x1, y1, x2, y2) in an 800x1333 image and their COCO labels (person, car, dog).
BOXES = ((10.0, 20.0, 300.0, 400.0), (400.0, 100.0, 700.0, 500.0), (50.0, 500.0, 200.0, 780.0))
LABELS = (1, 3, 18)


def synthetic_batch(batch_size: int, height: int, width: int) -> CollatedBatch:
    """A training batch of random images (seed 1), each with three boxes grounded in the COCO-80 caption."""
    caption, label_to_tokens = coco_prompt()
    generator = torch.Generator().manual_seed(1)
    images, targets, rows = [], [], []
    for _ in range(batch_size):
        images.append(torch.randn(3, height, width, generator=generator))
        target = BoxList(torch.tensor(BOXES), (width, height))
        target.add_field("labels", torch.tensor(LABELS))
        targets.append(target)
        for label in LABELS:
            row = torch.zeros(256)
            row[label_to_tokens[label]] = 1.0
            rows.append(row)
    return CollatedBatch(to_image_list(images, size_divisible=32), tuple(targets), tuple(range(batch_size)),
                         torch.stack(rows), None, None, [caption] * batch_size, None)


def run_worker(args) -> None:
    """Train on one path in this process; save step times, losses and peak memory to args.out."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    set_current_device(device)
    cfg = glip_t_config(str(device), args.stochastic)
    use_amp = args.dtype == "amp"
    cfg.merge_from_list(["SOLVER.USE_AMP", str(use_amp), "SOLVER.AMP_DTYPE", args.amp_dtype])
    dtype = amp_dtype(device.type, args.amp_dtype)
    model = build_model(str(device), args.stochastic, cfg).train()
    use_plan(model, args.worker)
    optimizer = make_optimizer(cfg, model)
    scaler = make_grad_scaler(device.type, use_amp, dtype)
    model_ema = ModelEma(model, cfg.SOLVER.MODEL_EMA) if cfg.SOLVER.MODEL_EMA > 0 else None
    batch = synthetic_batch(args.batch_size, *args.size)
    times, losses_per_step = [], []
    for step in range(args.warmup + args.repeat):
        synchronize_device(device)
        start = time.perf_counter()
        losses = forward_losses(model, batch, device, use_amp, dtype)
        optimizer_step(sum(losses.values()), optimizer, scaler)
        if model_ema is not None:
            model_ema.update(model)
        synchronize_device(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        losses_per_step.append({name: value.item() for name, value in losses.items()})
    torch.save({"times": times, "losses": losses_per_step, "device": str(device),
                "peak_gib": peak_memory_mb(device) / 1024}, args.out)


def main() -> None:
    """Parse arguments; as parent, run every path in a subprocess and print the figures and the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", choices=("fp32", "amp"), default="fp32",
                        help="amp: the trainer's mixed precision (SOLVER.USE_AMP)")
    parser.add_argument("--amp", dest="dtype", action="store_const", const="amp", help="same as --dtype amp")
    parser.add_argument("--amp-dtype", default="", choices=("", "float16", "bfloat16"),
                        help="SOLVER.AMP_DTYPE (default: float16 with loss scaling on CUDA/NPU, bfloat16 on the CPU)")
    parser.add_argument("--repeat", "--iters", dest="repeat", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    add_path_arguments(parser)
    args = parse_or_run_worker(parser, run_worker)
    if args is None:
        return
    worker_args = ["--device", args.device, "--batch-size", str(args.batch_size), "--repeat", str(args.repeat),
                   "--warmup", str(args.warmup), "--dtype", args.dtype, "--amp-dtype", args.amp_dtype,
                   *path_worker_arguments(args)]
    results = {}
    for path, result in run_path_workers(__file__, args.paths, worker_args):
        results[path] = result
        seconds = statistics.median(result["times"])
        print(f"GLIP-T train {result['device']} {args.dtype} batch {args.batch_size} image "
              f"{args.size[0]}x{args.size[1]} {path:9s}: {args.batch_size / seconds:.4f} images/s (median step "
              f"{seconds:.2f} s over {len(result['times'])} steps), peak memory {result['peak_gib']:.2f} GiB")
    first = args.paths[0]
    if first != "reference" and "reference" in results:
        fast, reference = results[first], results["reference"]
        ratio = statistics.median(reference["times"]) / statistics.median(fast["times"])
        differences = ", ".join(
            f"{max(abs(f[name] - r[name]) / max(abs(r[name]), 1e-12) for name in r):.1e}"
            for f, r in zip(fast["losses"], reference["losses"]))
        print(f"speed-up {first} vs reference: {ratio:.2f}x; peak memory {fast['peak_gib']:.2f} vs "
              f"{reference['peak_gib']:.2f} GiB; largest relative loss difference per step: {differences}")


if __name__ == "__main__":
    main()
