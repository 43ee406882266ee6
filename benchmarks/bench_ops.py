"""Time each custom op's compiled kernel (maskrcnn_benchmark._C) against its PyTorch implementation.

Usage: python benchmarks/bench_ops.py [--device cpu|cuda] [--repeat 5] [--threads 2] [--small]
Shapes are GLIP-T's (256 channels, 3x3 DCN with offsets from the finer level, 256 tokens, 80-class NMS) on a
reduced image unless --small. For every op and pass (forward; forward + backward where it has one) it prints the
median milliseconds of both implementations over --repeat runs after one warm-up, their ratio, and the
implementation the default dispatch picks (layers.dispatch.COMPILED_BY_DEFAULT).
"""
import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn_benchmark.layers import dispatch  # noqa: E402


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(run: Callable[[], None], device: str, repeat: int) -> float:
    """Median wall time of `run` in milliseconds, after one warm-up call."""
    run()
    synchronize(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def nms_case(device: str, small: bool) -> tuple[tuple, dict]:
    """Pre-NMS candidates of one image: top boxes of 5 levels with 80 labels, thresh 0.6."""
    gen = torch.Generator().manual_seed(0)
    num = 1000 if small else 5000
    centers = torch.rand(num // 20, 2, generator=gen) * 1000
    center = centers[torch.randint(0, num // 20, (num,), generator=gen)] + torch.randn(num, 2, generator=gen) * 20
    size = torch.rand(num, 2, generator=gen) * 200 + 10
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    scores = torch.rand(num, generator=gen)
    labels = torch.randint(1, 81, (num,), generator=gen)
    return (boxes.to(device), scores.to(device), labels.to(device), 0.6), {}


def roi_align_case(device: str, small: bool) -> tuple[tuple, dict]:
    """512 rois (7x7, sampling 2, aligned) on a 256-channel stride-8 map."""
    gen = torch.Generator().manual_seed(0)
    height, width = (25, 42) if small else (50, 84)
    num = 128 if small else 512
    features = torch.randn(2, 256, height, width, generator=gen)
    xy = torch.rand(num, 2, generator=gen) * torch.tensor([width * 8.0, height * 8.0])
    wh = torch.rand(num, 2, generator=gen) * 200 + 8
    rois = torch.cat([torch.randint(0, 2, (num, 1), generator=gen).float(), xy, xy + wh], dim=1)
    return (features.to(device), rois.to(device), (7, 7), 0.125, 2, True), {}


def focal_case(device: str, small: bool) -> tuple[tuple, dict]:
    """Token loss of 2 images: (2, anchors, 256) logits, 5% positives, 200 real tokens."""
    gen = torch.Generator().manual_seed(0)
    anchors = 2000 if small else 8000
    logits = torch.randn(2, anchors, 256, generator=gen) * 3
    targets = (torch.rand(2, anchors, 256, generator=gen) < 0.05).float()
    text_mask = torch.ones(2, 256, dtype=torch.long)
    text_mask[:, 200:] = 0
    return (logits.to(device), targets.to(device), 0.25, 2.0, text_mask.to(device)), {}


def deform_case(device: str, small: bool) -> tuple[tuple, dict]:
    """DyConv[0]: 256 -> 256 channels, 3x3, on the coarser level with offsets predicted on the finer one."""
    gen = torch.Generator().manual_seed(0)
    channels = 64 if small else 256
    height, width = (13, 21) if small else (25, 42)
    image = torch.randn(2, channels, height, width, generator=gen)
    offset_mask = torch.randn(2, 27, 2 * height, 2 * width, generator=gen)
    weight = torch.randn(channels, channels, 3, 3, generator=gen) * 0.02
    bias = torch.zeros(channels)
    tensors = (image, offset_mask[:, :18], offset_mask[:, 18:].sigmoid(), weight, bias)
    return tuple(t.to(device) for t in tensors), dict(stride=1, padding=1, dilation=1)


CASES = {
    "ml_nms": (nms_case, None),
    "roi_align": (roi_align_case, 0),
    "token_sigmoid_focal_loss": (focal_case, 0),
    "modulated_deform_conv": (deform_case, (0, 1, 2, 3, 4)),
}


def timed_passes(function: Callable, args: tuple, kwargs: dict, grad_args, device: str,
                 repeat: int) -> dict[str, float]:
    """Milliseconds of the forward pass, and of forward + backward when the op is differentiable."""
    times = {"forward": median_ms(lambda: function(*args, **kwargs), device, repeat)}
    if grad_args is None:
        return times
    indices = (grad_args,) if isinstance(grad_args, int) else grad_args

    def forward_backward() -> None:
        inputs = [a.detach().requires_grad_(True) if i in indices else a for i, a in enumerate(args)]
        function(*inputs, **kwargs).sum().backward()

    times["forward+backward"] = median_ms(forward_backward, device, repeat)
    return times


def main() -> None:
    """Print the timing table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="smaller shapes (quick check)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not dispatch.load_extension():
        raise SystemExit(f"{dispatch.EXTENSION} is not built: {dispatch.extension_error()}")
    print(f"device {args.device}, {torch.get_num_threads()} threads, median of {args.repeat} (ms)")
    print(f"{'op':26}{'pass':18}{'pytorch':>10}{'compiled':>10}{'speed-up':>10}  default")
    for op, (make_case, grad_args) in CASES.items():
        case_args, case_kwargs = make_case(args.device, args.small)
        results = {
            name: timed_passes(dispatch.kernel(op, name), case_args, case_kwargs, grad_args, args.device, args.repeat)
            for name in ("pytorch", "compiled")
        }
        default = dispatch.implementation(op, args.device)
        for phase in results["pytorch"]:
            slow, fast = results["pytorch"][phase], results["compiled"][phase]
            print(f"{op:26}{phase:18}{slow:10.2f}{fast:10.2f}{slow / fast:9.2f}x  {default}", flush=True)


if __name__ == "__main__":
    main()
