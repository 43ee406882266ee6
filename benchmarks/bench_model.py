"""Time GLIP-T (random weights) eval forward and train step on one image with the 80-class COCO prompt.

Usage: python benchmarks/bench_model.py [--mode eval|train] [--device cpu|cuda] [--dtype fp32|bf16|fp16]
       [--size 800 1333] [--repeat 3] [--threads 2]
Prints the median seconds over --repeat runs after one warm-up, and the peak memory (process RSS on CPU,
allocator peak on CUDA). Run one mode per process so that each peak is its own.
"""
import argparse
import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn_benchmark.config import get_cfg_defaults  # noqa: E402
from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: E402
from maskrcnn_benchmark.structures.bounding_box import BoxList  # noqa: E402
from maskrcnn_benchmark.structures.image_list import to_image_list  # noqa: E402

COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis "
    "snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup "
    "fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch "
    "potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink "
    "refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def coco_prompt() -> "tuple[str, dict]":
    """The COCO-80 caption joined by '. ' and its label -> token-indices map."""
    from maskrcnn_benchmark.modeling.language_backbone import load_shipped_tokenizer

    names = [n.replace("_", " ") for n in COCO_NAMES]
    caption = ". ".join(names)
    encoding = load_shipped_tokenizer()(caption)
    positive_map, start = {}, 0
    for label, name in enumerate(names, start=1):
        begin = caption.index(name, start)
        first, last = encoding.char_to_token(begin), encoding.char_to_token(begin + len(name) - 1)
        positive_map[label] = list(range(first, last + 1))
        start = begin + len(name)
    return caption, positive_map


def build_model(device: str) -> torch.nn.Module:
    """Full-size GLIP-T from the official config, random weights."""
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(ROOT / "configs/pretrain/glip_Swin_T_O365_GoldG.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", device])
    torch.manual_seed(0)
    return build_detection_model(cfg).to(device)


def peak_memory_gb(device: str) -> float:
    """Peak resident memory of this process (CPU) or peak CUDA allocation, in GB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def time_runs(step, repeat: int, device: str) -> list:
    """Seconds of each of `repeat` runs of `step` after one warm-up."""
    times = []
    for _ in range(repeat + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    """Parse arguments, run the benchmark, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("eval", "train"), default="eval")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.device)
    caption, positive_map = coco_prompt()
    image = torch.randn(3, *args.size, device=args.device)
    images = to_image_list([image], size_divisible=32)
    dtype = DTYPES[args.dtype]
    autocast = (torch.autocast(device_type=args.device.split(":")[0], dtype=dtype) if dtype is not None
                else contextlib.nullcontext())

    if args.mode == "eval":
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                model(images, captions=[caption], positive_map=positive_map)
    else:
        model.train()
        h, w = args.size
        target = BoxList(torch.tensor([[10.0, 20.0, 300.0, 400.0], [400.0, 100.0, 700.0, 500.0],
                                       [50.0, 500.0, 200.0, 780.0]], device=args.device), (w, h))
        target.add_field("labels", torch.tensor([1, 3, 18], device=args.device))
        rows = torch.zeros(3, 256, device=args.device)
        for row, label in enumerate((1, 3, 18)):
            rows[row, positive_map[label]] = 1.0

        def step():
            model.zero_grad(set_to_none=True)
            with autocast:
                losses = model(images, targets=[target], captions=[caption], positive_map=rows)
            sum(losses.values()).backward()

    times = time_runs(step, args.repeat, args.device)
    print(f"GLIP-T {args.mode} {args.device} {args.dtype} image {args.size[0]}x{args.size[1]} "
          f"threads {args.threads}: median {statistics.median(times):.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in times)}), peak memory {peak_memory_gb(args.device):.2f} GB")


if __name__ == "__main__":
    main()
