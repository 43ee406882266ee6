"""Time GLIP-T (random weights) on execution plans (default: the device's own and the reference plan), with the
80-class COCO prompt.

Usage: python benchmarks/bench_model.py [--mode eval|train] [--device cpu|cuda] [--dtype fp32|bf16|fp16]
       [--size 800 1333] [--repeat 3] [--threads 2] [--plans auto reference] [--stochastic]
Plans: auto (the device's: cpu on the CPU, accelerator elsewhere), cpu, accelerator, reference (--paths is an
alias of --plans; its old name "fast" means auto).
Each plan runs in its own subprocess (same seed, so same weights and input): median seconds over --repeat runs
after one warm-up, peak memory (process RSS on CPU, allocator peak on CUDA). The parent prints the matmul speed
of the machine and its load first, then each path, the time ratio and the largest differences between the
paths' outputs (eval: detection scores and boxes; train: losses and gradient norms).
"""
import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn_benchmark.config import get_cfg_defaults  # noqa: E402
from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: E402
from maskrcnn_benchmark.structures.bounding_box import BoxList  # noqa: E402
from maskrcnn_benchmark.structures.image_list import to_image_list  # noqa: E402
from maskrcnn_benchmark.utils.device import peak_memory_mb, synchronize_device  # noqa: E402

COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis "
    "snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup "
    "fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch "
    "potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink "
    "refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PLANS = ("auto", "cpu", "accelerator", "reference")


def coco_prompt() -> "tuple[str, dict]":
    """The COCO-80 caption joined by '. ' and its label -> token-indices map."""
    from maskrcnn_benchmark.text import load_shipped_tokenizer

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


def glip_t_config(device: str, stochastic: bool = True):
    """The official GLIP-T config with no weight file; without dropout/drop-path/DropBlock unless `stochastic`
    (then two paths draw different random numbers and their training outputs cannot be compared)."""
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(ROOT / "configs/pretrain/glip_Swin_T_O365_GoldG.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", device])
    if not stochastic:
        cfg.merge_from_list(["MODEL.SWINT.DROP_PATH_RATE", 0.0, "MODEL.FPN.DROP_BLOCK", False,
                             "MODEL.DYHEAD.FUSE_CONFIG.ATTN_DROPOUT", 0.0])
    return cfg


def build_model(device: str, stochastic: bool = True, cfg=None) -> torch.nn.Module:
    """Full-size GLIP-T with random weights (seed 0) on `device`, from `cfg` or `glip_t_config`."""
    cfg = cfg if cfg is not None else glip_t_config(device, stochastic)
    torch.manual_seed(0)
    model = build_detection_model(cfg).to(device)
    if not stochastic:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return model


def time_runs(step, repeat: int, device: str) -> list:
    """Seconds of each of `repeat` runs of `step` after one warm-up."""
    times = []
    for _ in range(repeat + 1):
        synchronize_device(torch.device(device))
        start = time.perf_counter()
        step()
        synchronize_device(torch.device(device))
        times.append(time.perf_counter() - start)
    return times[1:]


def make_step(model, args):
    """The benchmarked step (eval forward or train step) and a function returning its outputs to compare."""
    caption, positive_map = coco_prompt()
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(3, *args.size, generator=generator).to(args.device)
    images = to_image_list([image], size_divisible=32)
    dtype = DTYPES[args.dtype]
    device_type = args.device.split(":")[0]
    autocast = (lambda: torch.autocast(device_type=device_type, dtype=dtype)) if dtype else contextlib.nullcontext
    outputs = {}
    if args.mode == "eval":
        model.eval()
        head_outputs = []
        model.rpn.head.register_forward_hook(lambda module, inputs, output: head_outputs.append(output))

        def step():
            head_outputs.clear()
            with torch.no_grad(), autocast():
                detections = model(images, captions=[caption], positive_map=positive_map)[0]
            # Random weights give few or no detections: the raw head outputs are compared too.
            head = head_outputs[0]
            outputs.update(boxes=detections.bbox.float().cpu(), scores=detections.get_field("scores").float().cpu(),
                           labels=detections.get_field("labels").cpu(),
                           regression=torch.cat([t.flatten() for t in head.box_regression]).float().cpu(),
                           centerness=torch.cat([t.flatten() for t in head.centerness]).float().cpu(),
                           token_logits=torch.cat(head.dot_product_logits, dim=1).float().cpu())
        return step, outputs

    model.train()
    h, w = args.size
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [400.0, 100.0, 700.0, 500.0], [50.0, 500.0, 200.0, 780.0]])
    target = BoxList(boxes.to(args.device), (w, h))
    target.add_field("labels", torch.tensor([1, 3, 18], device=args.device))
    rows = torch.zeros(3, 256, device=args.device)
    for row, label in enumerate((1, 3, 18)):
        rows[row, positive_map[label]] = 1.0

    def step():
        model.zero_grad(set_to_none=True)
        with autocast():
            losses = model(images, targets=[target], captions=[caption], positive_map=rows)
        sum(losses.values()).backward()
        outputs.update({name: value.detach().float().cpu() for name, value in losses.items()})
        outputs["grad_norms"] = {name: p.grad.float().norm().cpu() for name, p in model.named_parameters()
                                 if p.grad is not None}
    return step, outputs


def run_worker(args) -> None:
    """Benchmark one path in this process and save its timings and outputs to args.out."""
    torch.set_num_threads(args.threads)
    model = build_model(args.device, stochastic=args.stochastic)
    use_plan(model, args.worker)
    step, outputs = make_step(model, args)
    times = time_runs(step, args.repeat, args.device)
    torch.save({"times": times, "peak_gib": peak_memory_mb(torch.device(args.device)) / 1024, "outputs": outputs},
               args.out)


def matmul_gflops(dtype: torch.dtype, threads: int, size: int = 2048, runs: int = 5) -> float:
    """Measured GFLOP/s of a size^3 matmul on this machine now."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(runs):
        a @ b
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def compare(mode: str, fast: dict, reference: dict) -> str:
    """Largest differences between a plan's outputs (`fast`) and the reference plan's, as a line of text."""
    if mode == "train":
        loss_diff = max(float((fast[k] - reference[k]).abs()) for k in fast if k.startswith("loss"))
        norms_f, norms_r = fast["grad_norms"], reference["grad_norms"]
        if norms_f.keys() != norms_r.keys():
            differing = norms_f.keys() ^ norms_r.keys()
            return f"max |loss diff| {loss_diff:.2e}; parameters with gradients differ: {differing}"
        # Relative to the largest gradient norm: tiny norms are dominated by rounding.
        largest = max(float(n) for n in norms_r.values())
        name = max(norms_r, key=lambda k: float((norms_f[k] - norms_r[k]).abs() / (norms_r[k] + 1e-3 * largest)))
        grad_rel = float((norms_f[name] - norms_r[name]).abs() / norms_r[name].clamp(min=1e-30))
        return (f"max |loss diff| {loss_diff:.2e}, largest grad-norm difference {grad_rel:.2e} relative "
                f"({name}: {float(norms_f[name]):.4g} vs {float(norms_r[name]):.4g})")
    num_tokens = min(fast["token_logits"].shape[-1], reference["token_logits"].shape[-1])  # the real tokens
    fast, reference = ({**outputs, "token_logits": outputs["token_logits"][..., :num_tokens]}
                       for outputs in (fast, reference))
    head = ", ".join(f"{name} {float((fast[name] - reference[name]).abs().max()):.2e}"
                     for name in ("regression", "centerness", "token_logits"))
    head = f"max |head output diff|: {head}"
    if len(fast["scores"]) != len(reference["scores"]):
        return f"{head}; detection counts differ: {len(fast['scores'])} vs {len(reference['scores'])}"
    if not len(fast["scores"]):
        return f"{head}; no detections on either path"
    order_f = torch.argsort(fast["scores"], descending=True)
    order_r = torch.argsort(reference["scores"], descending=True)
    score_diff = float((fast["scores"][order_f] - reference["scores"][order_r]).abs().max())
    box_diff = float((fast["boxes"][order_f] - reference["boxes"][order_r]).abs().max())
    same_labels = bool(torch.equal(fast["labels"][order_f], reference["labels"][order_r]))
    return (f"{head}; {len(fast['scores'])} detections, max |score diff| {score_diff:.2e}, "
            f"max |box diff| {box_diff:.2e} px, labels {'equal' if same_labels else 'differ'}")


def use_plan(model: torch.nn.Module, plan: str) -> None:
    """Put `model` on execution plan `plan` ("auto": keep the one chosen for its device) and print it."""
    if plan != "auto":
        model.set_execution_plan(plan)
    print(f"execution plan: {model.execution_plan.describe()}", flush=True)


def run_path_workers(script: str, paths, worker_args):
    """Run `script --worker PLAN --out FILE *worker_args` for each plan in its own process; yield (plan, result)."""
    with tempfile.TemporaryDirectory() as folder:
        for path in paths:
            out = os.path.join(folder, f"{path}.pt")
            subprocess.run([sys.executable, script, "--worker", path, "--out", out, *worker_args], check=True)
            yield path, torch.load(out, weights_only=True)


def machine_line(threads: int) -> str:
    """Load average and matmul speed now: the context every timing needs on a shared machine."""
    load = os.getloadavg()
    return (f"machine: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; matmul 2048^3 with {threads} "
            f"threads: fp32 {matmul_gflops(torch.float32, threads):.0f} GFLOP/s, "
            f"bf16 {matmul_gflops(torch.bfloat16, threads):.0f} GFLOP/s")


def add_path_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both benchmarks share: image size, threads, which paths, stochastic layers, worker plumbing."""
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--plans", "--paths", dest="paths", nargs="+", choices=PLANS, default=["auto", "reference"],
                        type=lambda name: "auto" if name == "fast" else name,
                        help="execution plans to run, each in its own process; the first is compared with "
                             "'reference' when both run")
    parser.add_argument("--stochastic", action="store_true",
                        help="keep dropout, drop-path and DropBlock in training (outputs then differ between paths)")
    parser.add_argument("--worker", choices=PLANS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)


def path_worker_arguments(args: argparse.Namespace) -> list:
    """The shared options of add_path_arguments, as a worker's command line."""
    return ["--size", *map(str, args.size), "--threads", str(args.threads)] + (["--stochastic"] if args.stochastic
                                                                               else [])


def parse_or_run_worker(parser: argparse.ArgumentParser, run_worker) -> "argparse.Namespace | None":
    """Parse the command line. A worker process runs `run_worker(args)` and gets None; the parent gets the arguments
    after the machine line is printed."""
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return None
    print(machine_line(args.threads))
    return args


def main() -> None:
    """Parse arguments; as parent, run every path in a subprocess and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("eval", "train"), default="eval")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--repeat", type=int, default=3)
    add_path_arguments(parser)
    args = parse_or_run_worker(parser, run_worker)
    if args is None:
        return
    worker_args = ["--mode", args.mode, "--device", args.device, "--dtype", args.dtype, "--repeat", str(args.repeat),
                   *path_worker_arguments(args)]
    results = {}
    for path, result in run_path_workers(__file__, args.paths, worker_args):
        results[path] = result
        times = result["times"]
        print(f"GLIP-T {args.mode} {args.device} {args.dtype} image {args.size[0]}x{args.size[1]} "
              f"threads {args.threads} {path:9s}: median {statistics.median(times):.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in times)}), peak memory {result['peak_gib']:.2f} GiB")
    first = args.paths[0]
    if first != "reference" and "reference" in results:
        fast, reference = results[first], results["reference"]
        ratio = statistics.median(reference["times"]) / statistics.median(fast["times"])
        print(f"speed-up {first} vs reference: {ratio:.2f}x; peak memory {fast['peak_gib']:.2f} vs "
              f"{reference['peak_gib']:.2f} GiB; {compare(args.mode, fast['outputs'], reference['outputs'])}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
