"""Training engine: logging, checkpoints, exact resume (also after SIGKILL), non-finite losses, AMP, launch script.

Fast tests drive `do_train` with a tiny model and data; the end-to-end ones run tools/train_net.py (and the
performance launch script) on the small golden model with 96x96 images of a COCO-format folder written here.
"""
import io
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    ROOT,
    free_port,
    load_tool,
    reference_run,
    small_train_options,
    subprocess_env,
    toy_training_loader,
    train_net_command,
    write_tiny_coco,
)
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.engine.trainer import (
    WARMUP_ITERATIONS,
    NonFiniteLossError,
    NoTrainingStepError,
    do_train,
    training_throughput,
    write_loss_curve,
)
from maskrcnn_benchmark.solver import make_lr_scheduler, make_optimizer
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.amp import amp_dtype, make_grad_scaler
from maskrcnn_benchmark.utils.checkpoint import Checkpointer, read_checkpoint
from maskrcnn_benchmark.utils.device import resolve_device
from maskrcnn_benchmark.utils.ema import ModelEma
from maskrcnn_benchmark.utils.miscellaneous import save_loss_curve, seed_all, split_constant_zero

SMALL = ROOT / "tests" / "fixtures" / "small"


# ----------------------------------------------------------------------------------------------------------------
# A tiny model and dataset with the trainer's interfaces; randomness in the data (torch + Python) and in dropout
# ----------------------------------------------------------------------------------------------------------------
class TinyDetector(nn.Module):
    """Stands in for GeneralizedVLRCNN: images in, a dict of two losses out; NaN on chosen forward calls."""

    def __init__(self, nan_on_calls=(), nan_gradient_on_calls=()):
        super().__init__()
        self.body = nn.Linear(3 * 8 * 8, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 2)
        self.dropout = nn.Dropout(0.3)
        self.nan_on_calls = set(nan_on_calls)
        self.nan_gradient_on_calls = set(nan_gradient_on_calls)
        self.calls = 0
        self.register_buffer("index", torch.arange(3))

    def forward(self, images, targets, captions=None, positive_map=None, greenlight_map=None, tokenized=None):
        self.calls += 1
        features = self.dropout(self.norm(self.body(images.tensors.flatten(1))))
        out = self.head(features)
        loss_a = ((out[:, 0] - 1.0) ** 2).mean()
        loss_b = out[:, 1].abs().mean()
        if self.calls in self.nan_on_calls:
            loss_a = loss_a * float("nan")
        if self.calls in self.nan_gradient_on_calls:
            loss_b = NanGradient.apply(loss_b)
        return {"loss_a": loss_a, "loss_b": loss_b}


class NanGradient(torch.autograd.Function):
    """Identity whose gradient is NaN: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class NoisyImages(Dataset):
    """Images whose noise (torch) and flip (Python random) are drawn when an item is read."""

    def __init__(self, size: int = 6, boxless: Sequence[int] = ()):
        generator = torch.Generator().manual_seed(7)
        self.images = torch.rand(size, 3, 8, 8, generator=generator)
        self.boxless = set(boxless)  # indices of images without boxes (as after a caption dropped them)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        import random

        image = self.images[index] + 0.1 * torch.rand(3, 8, 8)
        if random.random() < 0.5:
            image = image.flip(-1)
        boxes = [] if index in self.boxless else [[1.0, 1.0, 5.0, 5.0]]
        target = BoxList(torch.tensor(boxes).reshape(-1, 4), (8, 8))
        return image, target, index


def tiny_cfg(output_dir, max_iter=6, **solver):
    cfg = get_cfg_defaults()
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.MODEL.DEVICE = "cpu"
    settings = dict(OPTIMIZER="ADAMW", BASE_LR=0.01, LANG_LR=0.01, WEIGHT_DECAY=0.01, WARMUP_ITERS=2,
                    WARMUP_FACTOR=0.1, STEPS=(0.5,), MAX_ITER=max_iter, IMS_PER_BATCH=2, CHECKPOINT_PERIOD=2,
                    LOG_PERIOD=1, MODEL_EMA=0.9)
    settings.update(solver)
    for key, value in settings.items():
        cfg.SOLVER[key] = value
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.freeze()
    return cfg


def run_tiny(cfg, nan_on_calls=(), early_stop_iteration=-1, dataset_size=6, nan_gradient_on_calls=(), boxless=()):
    """What tools/train_net.py does, on the tiny model: seed, build, load or resume, train."""
    seed_all(cfg.SOLVER.SEED)
    model = TinyDetector(nan_on_calls, nan_gradient_on_calls)
    dataset = NoisyImages(dataset_size, boxless)
    loader = toy_training_loader(dataset, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer, len(loader))
    model_ema = ModelEma(model, cfg.SOLVER.MODEL_EMA)
    checkpointer = Checkpointer(model, optimizer, scheduler, cfg.OUTPUT_DIR, save_to_disk=True,
                                scaler=make_grad_scaler("cpu", False), model_ema=model_ema,
                                keep_last=cfg.SOLVER.KEEP_LAST_CHECKPOINTS)
    arguments = {"iteration": 0}
    arguments.update(checkpointer.load())
    do_train(cfg, model, loader, optimizer, scheduler, checkpointer, torch.device("cpu"),
             cfg.SOLVER.CHECKPOINT_PERIOD, arguments, early_stop_iteration=early_stop_iteration,
             model_ema=model_ema)
    return model, model_ema, arguments


def test_log_line_checkpoint_contents_and_loss_curve(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, max_iter=5, KEEP_LAST_CHECKPOINTS=2, CHECKPOINT_PERIOD=1, LOG_PERIOD=2)
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.trainer"):
        model, model_ema, arguments = run_tiny(cfg)
    lines = [r.getMessage() for r in caplog.records if "iter: " in r.getMessage()]
    assert [int(re.search(r"iter: (\d+)", line).group(1)) for line in lines] == [2, 4, 5]
    number = r"(-?[\d.]+(?:e-?\d+)?)"
    for line in lines:
        for name in ("loss", "loss_a", "loss_b", "time", "data", "fps"):
            assert re.search(rf"(^|  ){name}: {number} \({number}\)", line), (name, line)
        assert re.search(r"eta: \d+:\d\d:\d\d", line) and re.search(r"lr: [\d.]+", line)
        assert re.search(r"max mem: \d+", line)
        current_time = float(re.search(rf"  time: {number}", line).group(1))
        fps = float(re.search(rf"fps: {number}", line).group(1))
        # fps is the global batch over the iteration time (shown rounded to 4 decimals).
        assert abs(cfg.SOLVER.IMS_PER_BATCH / fps - current_time) <= 6e-5
    # The logged current loss is the sum of the logged current losses.
    last = lines[-1]
    values = {n: float(re.search(rf"(?:^|  ){n}: {number}", last).group(1)) for n in ("loss", "loss_a", "loss_b")}
    assert values["loss"] == pytest.approx(values["loss_a"] + values["loss_b"], abs=2e-4)

    # Newest two periodic checkpoints kept, plus the final one; the pointer names the final one.
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == [
        "model_0000003.pth", "model_0000004.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = read_checkpoint(str(tmp_path / "model_final.pth"))  # weights_only=True
    assert {"model", "optimizer", "scheduler", "scaler", "model_ema", "iteration", "rng_states",
            "loss_history"} <= set(final)
    assert final["iteration"] == 5 and final["scheduler"]["last_epoch"] == 5
    assert final["loss_history"]["iteration"] == [1, 2, 3, 4, 5]
    for key, value in model_ema.state_dict().items():
        assert torch.equal(final["model_ema"][key], value)
    assert not torch.equal(final["model_ema"]["head.weight"], final["model"]["head.weight"])
    with open(tmp_path / "loss_curve.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("stop_at", [3, 2], ids=["pass-boundary", "mid-pass"])
def test_resume_is_exact(tmp_path, stop_at):
    # 6 images, batch 2: a pass over the data is 3 iterations, so iteration 2 is inside the first pass.
    _, reference_ema, reference = run_tiny(tiny_cfg(tmp_path / "reference", max_iter=7, CHECKPOINT_PERIOD=100))
    reference_model = read_checkpoint(str(tmp_path / "reference" / "model_final.pth"))["model"]

    cfg = tiny_cfg(tmp_path / "resumed", max_iter=7, CHECKPOINT_PERIOD=100)
    run_tiny(cfg, early_stop_iteration=stop_at)
    assert (tmp_path / "resumed" / "last_checkpoint").read_text() == f"model_{stop_at:07d}.pth"
    model, model_ema, resumed = run_tiny(cfg)  # a fresh process would do the same: everything is rebuilt

    assert resumed["loss_history"] == reference["loss_history"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference_model[key]), key
    for key, value in model_ema.state_dict().items():
        assert torch.equal(value, reference_ema.state_dict()[key]), key


def test_nonfinite_loss_stops_naming_iteration_and_values(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, max_iter=6)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss_a = nan, loss_b = [\d.]+, loss = nan"):
        run_tiny(cfg, nan_on_calls={3})
    # The last checkpoint (iteration 2) is intact and loads.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    model = TinyDetector()
    extra = Checkpointer(model, save_dir=str(tmp_path)).load()
    assert extra["iteration"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not [name for name in os.listdir(tmp_path) if "partial" in name]


def test_nonfinite_gradient_with_finite_loss_stops_before_the_update(tmp_path):
    cfg = tiny_cfg(tmp_path, max_iter=6)
    with pytest.raises(NonFiniteLossError, match=r"Non-finite gradient at iteration 3: loss_a = [\d.]+, .*"
                                                 r"gradient norm = nan"):
        run_tiny(cfg, nan_gradient_on_calls={3})
    model = TinyDetector()
    assert Checkpointer(model, save_dir=str(tmp_path)).load()["iteration"] == 2


def test_nonfinite_steps_are_skipped_when_configured(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, max_iter=6, SKIP_NONFINITE_STEPS=True)
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.trainer"):
        model, _, arguments = run_tiny(cfg, nan_on_calls={3, 5}, nan_gradient_on_calls={2})
    assert arguments["skipped_steps"] == 3
    assert arguments["loss_history"]["iteration"] == [1, 4, 6]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN gradients never reached the weights
    messages = [r.getMessage() for r in caplog.records]
    assert any("Non-finite loss at iteration 5" in m and "step skipped (3 so far)" in m for m in messages)
    assert "skipped steps: 3" in [m for m in messages if "iter: 6" in m][0]


def skip_warnings(caplog) -> list:
    """The trainer's warnings about skipped batches, in order."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "batch skipped" in r.getMessage()]


def test_skipped_batches_are_warned_with_a_running_count_and_a_total(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, max_iter=6)
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.trainer"):
        _, _, arguments = run_tiny(cfg, boxless=(0,))  # image 0 is in one batch of each pass: 2 of 6 skipped
    warnings = skip_warnings(caplog)
    assert arguments["skipped_batches"] == len(warnings) == 2
    assert "(1 batch skipped so far). Training images lose their boxes" in warnings[0]
    assert warnings[1].endswith("(2 batches skipped so far).")
    assert arguments["loss_history"]["iteration"] == [i for i in range(1, 7)
                                                       if f"Iteration {i}: batch skipped" not in " ".join(warnings)]
    totals = [r for r in caplog.records if r.getMessage().startswith("Optimizer steps taken")]
    assert totals[0].levelno == logging.WARNING
    assert totals[0].getMessage() == ("Optimizer steps taken (whole run): 4; batches skipped (too many images "
                                      "without boxes): 2; steps skipped (non-finite loss): 0.")
    assert (tmp_path / "model_final.pth").exists()


def test_a_run_where_every_batch_is_skipped_fails_without_a_final_checkpoint(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, max_iter=3)
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.trainer"), \
            pytest.raises(NoTrainingStepError, match=r"No optimizer step was taken in iterations 1-3: 3 batches "
                                                     r"were skipped .* no final checkpoint was written"):
        run_tiny(cfg, boxless=range(6))
    assert [m.split(": ")[0] for m in skip_warnings(caplog)] == ["Iteration 1", "Iteration 2", "Iteration 3"]
    assert not (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"  # the periodic one, before the end


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_leaves_only_loadable_checkpoints(tmp_path):
    writer = (
        "import sys, torch\n"
        "from torch import nn\n"
        "from maskrcnn_benchmark.utils.checkpoint import Checkpointer\n"
        "ckpt = Checkpointer(nn.Linear(4, 2), save_dir=sys.argv[1], save_to_disk=True)\n"
        "ckpt.save('model_0000001', iteration=1)\n"
        "big = torch.randn(48, 1024, 1024)\n"
        "for i in range(2, 1000):\n"
        "    ckpt.save(f'model_{i:07d}', iteration=i, payload=big)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path)], cwd=ROOT, env=subprocess_env())
    try:
        deadline = time.time() + 120
        while not (tmp_path / "last_checkpoint").exists() or \
                not [n for n in os.listdir(tmp_path) if ".partial-" in n]:
            assert process.poll() is None and time.time() < deadline, "the writer never started a checkpoint"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    names = os.listdir(tmp_path)
    assert [n for n in names if ".partial-" in n], "killed while writing: the partial file should be left"
    for name in names:
        if name.endswith(".pth") or name.startswith("model_"):
            checkpoint = read_checkpoint(str(tmp_path / name))  # everything that looks like a checkpoint loads
            assert set(checkpoint["model"]) == {"weight", "bias"}
    pointed = (tmp_path / "last_checkpoint").read_text()
    assert pointed in names and read_checkpoint(str(tmp_path / pointed))["iteration"] >= 1
    # The next save clears the leftover.
    Checkpointer(nn.Linear(4, 2), save_dir=str(tmp_path), save_to_disk=True).save("model_final")
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]


def test_device_and_amp_choice(caplog):
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with caplog.at_level(logging.WARNING):
            assert resolve_device("cuda", local_rank=1).type in ("cpu", "npu")  # the official default falls back
        assert "CUDA is not available" in caplog.text
    else:
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("auto").type in ("cpu", "cuda", "npu")
    with pytest.raises(ValueError, match="MODEL.DEVICE"):
        resolve_device("tpu")
    assert amp_dtype("cpu") == torch.bfloat16 and amp_dtype("cuda") == torch.float16
    assert not make_grad_scaler("cpu", True).is_enabled()  # bfloat16 needs no loss scaling


# ----------------------------------------------------------------------------------------------------------------
# End to end: tools/train_net.py on the small golden model
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path_factory):
    reference = reference_run(tmp_path_factory)
    output = reference["root"] / "killed"
    env = subprocess_env(DATASET=str(reference["data"]))
    process = subprocess.Popen(train_net_command(output, small_train_options(reference["weights"])), cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (output / "last_checkpoint").exists():
            assert process.poll() is None and time.time() < deadline, "the run ended before its 1st checkpoint"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed_at = (output / "last_checkpoint").read_text()
    assert killed_at == "model_0000003.pth", "killed too late to test resuming"

    subprocess.run(train_net_command(output, small_train_options(reference["weights"]), "--resume"), cwd=ROOT,
                   env=env, check=True, capture_output=True)
    log = (output / "log.txt").read_text()
    assert f"Resuming from {killed_at}" in log
    final, expected = read_checkpoint(str(output / "model_final.pth")), reference["final"]
    assert final["loss_history"] == expected["loss_history"]  # the same losses at every iteration
    for entry in ("model", "model_ema"):
        for key, value in expected[entry].items():
            assert torch.equal(final[entry][key], value), (entry, key)


@pytest.mark.slow
def test_bf16_autocast_trains_like_fp32(tmp_path_factory):
    reference = reference_run(tmp_path_factory)
    output = reference["root"] / "bf16"
    subprocess.run(train_net_command(output, small_train_options(reference["weights"]) + ["SOLVER.USE_AMP", "True"]),
                   cwd=ROOT, env=subprocess_env(DATASET=str(reference["data"])), check=True, capture_output=True)
    history = read_checkpoint(str(output / "model_final.pth"))["loss_history"]
    assert_trains_like_fp32(history, reference["final"]["loss_history"])


def assert_trains_like_fp32(history: dict, expected: dict) -> None:
    """Losses of a mixed-precision run against the fp32 run's, iteration by iteration.

    The first step differs only by the autocast rounding: every loss within 3% (+0.01). Later steps also carry
    the optimizer's response to that rounding, which grows step by step (measured on the PyTorch ops: the token
    loss 0.350 against 0.328 at step 5, after 1.82 at step 1), so they are compared to 3% of the loss's largest
    value in the run. And the run trains: the total loss falls as in fp32.
    """
    assert history["iteration"] == expected["iteration"] == [1, 2, 3, 4, 5]
    for name in ("loss", "loss_reg", "loss_centerness", "loss_dot_product_token"):
        np.testing.assert_allclose(history[name][0], expected[name][0], rtol=0.03, atol=0.01, err_msg=name)
        scale = max(abs(value) for value in expected[name])
        np.testing.assert_allclose(history[name], expected[name], rtol=0, atol=0.03 * scale + 0.01, err_msg=name)
    assert all(math.isfinite(value) for value in history["loss"])
    assert history["loss"][0] - history["loss"][-1] > 0.5 * (expected["loss"][0] - expected["loss"][-1])


@pytest.mark.slow
def test_float16_autocast_with_loss_scaling_trains_like_fp32(tmp_path_factory):
    """SOLVER.AMP_DTYPE float16 on the CPU: float16 autocast with the GradScaler, as on GPUs and NPUs."""
    reference = reference_run(tmp_path_factory)
    output = reference["root"] / "fp16"
    options = small_train_options(reference["weights"]) + ["SOLVER.USE_AMP", "True", "SOLVER.AMP_DTYPE", "float16"]
    subprocess.run(train_net_command(output, options), cwd=ROOT, env=subprocess_env(DATASET=str(reference["data"])),
                   check=True, capture_output=True)
    final = read_checkpoint(str(output / "model_final.pth"))
    assert final["scaler"]["scale"] > 0  # the loss scaler ran and was saved
    assert_trains_like_fp32(final["loss_history"], reference["final"]["loss_history"])
    assert "Execution plan: cpu (fusion=folded" in (output / "log.txt").read_text()


@pytest.mark.slow
def test_train_performance_script_runs_the_small_model_on_cpu(tmp_path):
    data = write_tiny_coco(tmp_path / "data", num_images=2)
    env = subprocess_env(MASTER_PORT=str(free_port()))
    del env["OMP_NUM_THREADS"]  # the script's own CPU thread default for the small models
    output = tmp_path / "output"  # the logs and reports, outside the checkout (default: test/output/<device_id>)
    result = subprocess.run(
        ["bash", "test/train_performance_1p.sh", f"--data_path={data}", "--small", "--early_stop_iteration=2",
         "--device_id=pytest", f"--work_dir={tmp_path / 'work'}", f"--output_path={output}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    # The script keeps PyTorch's thread default, names this machine's cores and the remedy for a busy machine.
    cores = int(re.search(r"CPU threads: PyTorch's default, one per core \((\d+)\)\. If other jobs share these "
                          r"cores, OMP_NUM_THREADS=1 copes better", result.stdout).group(1))
    assert cores == len(os.sched_getaffinity(0))
    lines = result.stdout.strip().splitlines()[-3:]
    assert re.fullmatch(r"Final Performance images/sec : \d+\.\d+", lines[0]), lines
    assert re.fullmatch(r"Final Train Accuracy : -?\d+\.\d+", lines[1]), lines
    assert re.fullmatch(r"E2E Training Duration sec : \d+", lines[2]), lines
    check_terminal_report(result.stdout, tmp_path)
    report = (output / "GLIP_for_PyTorch_bs1_1p_perf_perf_report.log").read_text()
    assert re.search(r"ActualFPS = \d+\.\d+", report)
    assert "CaseName = GLIP_for_PyTorch_bs1_1p_perf" in (output / "GLIP_for_PyTorch_bs1_1p_perf.log").read_text()
    assert (tmp_path / "work" / "model_0000002.pth").exists()

    missing = subprocess.run(["bash", "test/train_performance_1p.sh", f"--data_path={tmp_path / 'nothing'}",
                              "--device_id=pytest", f"--output_path={tmp_path / 'missing'}"], cwd=ROOT,
                             env=subprocess_env(), capture_output=True, text=True)
    assert missing.returncode != 0
    assert "coco/annotations/instances_train2017.json is missing" in missing.stderr and "DATA.md" in missing.stderr


# ----------------------------------------------------------------------------------------------------------------
# The launch scripts never delete results: eval leaves its checkpoint, a second training launch resumes
# ----------------------------------------------------------------------------------------------------------------
def launch(script: str, *options: str) -> subprocess.CompletedProcess:
    """bash test/<script> with a free rendezvous port (parallel runs must not share torchrun's fixed 29500)."""
    return subprocess.run(["bash", f"test/{script}", *options], cwd=ROOT,
                          env=subprocess_env(MASTER_PORT=str(free_port())), capture_output=True, text=True, timeout=600)


def contents(folder: Path) -> dict:
    """Every file under `folder` with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_eval_script_keeps_the_checkpoint_it_evaluates(tmp_path):
    data = write_tiny_coco(tmp_path / "data", num_images=1)
    output = tmp_path / "output" / "0"  # the scripts' output folder, which is also the default --work_dir
    output.mkdir(parents=True)
    (output / "model_final.pth").write_bytes(b"not a checkpoint")
    (output / "eval_0.log").write_text("the log of an earlier evaluation\n")
    result = launch("eval_1p.sh", "--small", f"--data_path={data}", f"--output_path={output}",
                    f"--load_from={output / 'model_final.pth'}", "--device_id=0")
    assert result.returncode != 0  # the file is no checkpoint...
    assert (output / "model_final.pth").read_bytes() == b"not a checkpoint"  # ...and it is still there
    assert (output / "eval_0.log.1").read_text() == "the log of an earlier evaluation\n"
    assert str(output / "model_final.pth") in (output / "eval_0.log").read_text()


@pytest.mark.slow
def test_training_script_refuses_a_folder_of_other_files_unless_told_to_overwrite(tmp_path):
    data = write_tiny_coco(tmp_path / "data", num_images=1)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's own file")
    options = ("--small", f"--data_path={data}", f"--work_dir={work}", f"--output_path={tmp_path / 'logs'}")
    refused = launch("train_performance_1p.sh", *options)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"ERROR: {work} already holds files (notes.txt ...) but no last_checkpoint to resume from. Nothing was "
        f"changed. Pass --work_dir=NEW_DIR for a new run, or --overwrite to train in this folder anyway (files of "
        f"the same name are replaced; nothing is deleted).")
    resume = launch("train_performance_1p.sh", *options, "--resume")
    assert resume.returncode == 1 and "--resume: " in resume.stderr and "holds no last_checkpoint" in resume.stderr
    overwrite = launch("train_performance_1p.sh", *options, "--overwrite", "--dry_run")
    assert overwrite.returncode == 0, overwrite.stderr
    assert f"would train in WORK_DIR={work} (tools/train_net.py without --resume or --no-resume)" in overwrite.stdout

    # A folder holding a run: the same command resumes it; --overwrite starts anew without loading its checkpoint.
    (work / "last_checkpoint").write_text("model_0000002.pth")
    (work / "model_0000002.pth").write_bytes(b"the first run's checkpoint")
    again = launch("train_performance_1p.sh", *options, "--dry_run")
    assert again.returncode == 0, again.stderr
    assert f"Resuming the run in {work} from its last checkpoint model_0000002.pth" in again.stdout
    assert "(tools/train_net.py --resume)" in again.stdout
    overwrite = launch("train_performance_1p.sh", *options, "--overwrite", "--dry_run")
    assert "(tools/train_net.py --no-resume)" in overwrite.stdout
    assert contents(work) == {"last_checkpoint": b"model_0000002.pth", "notes.txt": b"the user's own file",
                              "model_0000002.pth": b"the first run's checkpoint"}
    assert not (tmp_path / "logs").exists()  # the dry runs wrote nothing


@pytest.mark.slow
def test_second_training_launch_resumes_and_keeps_the_first_runs_files(tmp_path):
    data = write_tiny_coco(tmp_path / "data", num_images=2)
    work = tmp_path / "work"
    work.mkdir()
    # What a first launch left: its checkpoint at iteration 2 (the small model's weights), pointer and log.
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_fixtures import load_small_state_dict

    torch.save({"model": load_small_state_dict(), "iteration": 2}, work / "model_0000002.pth")
    (work / "last_checkpoint").write_text("model_0000002.pth")
    (work / "train_pytest.log").write_text("the first launch's log\n")
    first = contents(work)
    result = launch("train_performance_1p.sh", "--small", f"--data_path={data}", "--early_stop_iteration=2",
                    f"--output_path={work}", "--device_id=pytest")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming the run in {work} from its last checkpoint model_0000002.pth" in result.stdout
    assert "Resuming from model_0000002.pth" in (work / "log.txt").read_text()  # tools/train_net.py resumed
    assert re.search(r"^Final Train Accuracy : -?\d+\.\d+$", result.stdout, re.M)  # and evaluated
    kept = contents(work)
    assert kept["model_0000002.pth"] == first["model_0000002.pth"]
    assert kept["last_checkpoint"] == first["last_checkpoint"]
    assert kept["train_pytest.log.1"] == first["train_pytest.log"]


@pytest.mark.slow
def test_train_net_no_resume_starts_from_the_weight_in_a_folder_holding_a_run(tmp_path_factory):
    reference = reference_run(tmp_path_factory)
    output = reference["root"] / "restarted"
    shutil.copytree(reference["output"], output)
    finished = contents(output)
    subprocess.run(train_net_command(output, small_train_options(reference["weights"]), "--no-resume",
                                     "--early_stop_iteration", "1"),
                   cwd=ROOT, env=subprocess_env(DATASET=str(reference["data"])), check=True, capture_output=True)
    log = (output / "log.txt").read_text()
    assert "--no-resume: starting from MODEL.WEIGHT; model_final.pth" in log and "Resuming from" not in log
    assert (output / "last_checkpoint").read_text() == "model_0000001.pth"
    restarted = read_checkpoint(str(output / "model_0000001.pth"))
    assert restarted["loss_history"]["loss"] == reference["final"]["loss_history"]["loss"][:1]
    for name in ("model_final.pth", "model_0000003.pth"):  # the earlier run's checkpoints are untouched
        assert (output / name).read_bytes() == finished[name]



def check_terminal_report(out: str, tmp_path: Path) -> None:
    """What the launch script shows besides the three final lines: progress, COCO table, outputs, honest figures."""
    # One progress line per iteration of this 2-iteration run (captured output: every ~5% of the run).
    assert re.search(r"^iteration 1/2 \(50%\)  loss [\d.]+ \(median [\d.]+\)  [\d.]+ s/it  eta \d+:\d\d:\d\d$",
                     out, re.M), out
    assert re.search(r"^iteration 2/2 \(100%\)  loss ", out, re.M), out
    assert len(re.findall(r"^ Average (?:Precision|Recall) .* = -?[\d.]+$", out, re.M)) == 12, out
    log = ROOT / re.search(r"^Log: +(\S+)$", out, re.M).group(1)
    assert re.search(r"^Weights: +(\S+)$", out, re.M).group(1) == str(tmp_path / "work" / "model_0000002.pth")
    assert Path(re.search(r"^Loss curve: +(\S+)$", out, re.M).group(1)).is_file()

    # Images over the timed iterations, warm-up left out: 2 iterations of 1 image, the first is warm-up.
    throughput = re.search(r"^Training throughput: ([\d.]+) images/s \((\d+) images in ([\d.]+) s of training "
                           r"iterations, data loading included; the first (\d+) iterations left out as warm-up\)$",
                           out, re.M)
    assert throughput, out
    rate, images, seconds, warmup = (float(v) for v in throughput.groups())
    assert (images, warmup) == (1, 1)
    assert rate == pytest.approx(images / seconds, rel=0.01)  # seconds are shown with three decimals
    assert f"Final Performance images/sec : {throughput.group(1)}" in out
    assert throughput.group(0) in log.read_text()  # the trainer's own line, as logged

    # The validation bbox AP under its own name, equal to the seed's "Final Train Accuracy".
    ap = re.search(r"^Final validation bbox AP : (-?[\d.]+) \(COCO AP@\[\.50:\.95\]", out, re.M).group(1)
    assert f"Final Train Accuracy : {ap}" in out

    # The suggested demo command runs as printed (only the output file moved out of the repository).
    demo = re.search(r"^Try the model: +(python tools/demo\.py .*)$", out, re.M).group(1)
    picture = tmp_path / "demo.png"
    assert " --out demo.png " in demo
    subprocess.run(["bash", "-c", demo.replace(" --out demo.png ", f" --out {picture} ")], cwd=ROOT,
                   env=subprocess_env(), check=True, capture_output=True, timeout=300)
    with Image.open(picture) as png:
        assert min(png.size) >= 512


def test_use_tensorboard_without_tensorboard_stops_at_once_saying_how_to_install_it(monkeypatch, tmp_path):
    """TensorBoard is an optional extra: --use-tensorboard without it fails before any work, naming the install."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed, as after the README set-up
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    train_net = load_tool("tools/train_net.py")
    with pytest.raises(ImportError) as error:
        train_net.main(["--use-tensorboard", "--config-file", str(tmp_path / "never_read.yaml")])
    assert str(error.value) == (
        "--use-tensorboard needs TensorBoard, an optional extra that the README install leaves out. Install it with "
        "`pip install tensorboard` (or `pip install -e \".[tensorboard]\"` in the checkout), or train without "
        "--use-tensorboard.")


def test_training_throughput_is_images_over_time_with_warmup_left_out():
    # A slow first iteration (warm-up) and one slow iteration later: 21 iterations of 2 images.
    seconds = [10.0] + [0.5] * 19 + [20.0]
    speed = training_throughput(seconds, images_per_iteration=2)
    assert speed.warmup_iterations == WARMUP_ITERATIONS == 10
    assert (speed.images, speed.seconds) == (2 * 11, 0.5 * 10 + 20.0)
    assert speed.images_per_second == pytest.approx(22 / 25.0)
    # The mean of per-iteration rates, which the report used to print, is 3.6 times higher here.
    mean_of_rates = sum(2 / s for s in seconds[10:]) / 11
    assert mean_of_rates > 3.5 * speed.images_per_second
    # Short runs: at most half of the iterations count as warm-up.
    assert training_throughput([3.0, 1.0], 4) == (4.0, 4, 1.0, 1)
    assert training_throughput([2.0], 1) == (0.5, 1, 2.0, 0)
    assert training_throughput([], 1) == (0.0, 0, 0.0, 0)


def test_do_train_logs_the_throughput_it_measured(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, max_iter=4, CHECKPOINT_PERIOD=100)
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.trainer"):
        run_tiny(cfg)
    times = [float(re.search(r"  time: ([\d.]+)", r.getMessage()).group(1)) for r in caplog.records
             if "iter: " in r.getMessage()]
    line, = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Training throughput: ")]
    rate, images, seconds, warmup = re.fullmatch(
        r"Training throughput: ([\d.]+) images/s \((\d+) images in ([\d.]+) s of training iterations, data "
        r"loading included; the first (\d+) iterations left out as warm-up\)", line).groups()
    assert (int(images), int(warmup)) == (2 * 2, 2)  # 4 iterations of 2 images, the first 2 are warm-up
    # The logged iteration times are rounded to 0.1 ms (a few percent of this tiny model's iterations): the
    # logged figures lie within what that rounding allows.
    timed, slack = sum(times[2:]), 2 * 0.5e-4
    assert timed - slack - 0.5e-3 <= float(seconds) <= timed + slack + 0.5e-3
    assert int(images) / (timed + slack) <= float(rate) * 1.001
    assert float(rate) <= int(images) / max(timed - slack, 1e-9) * 1.001


def test_loss_curve_leaves_out_losses_that_are_zero_throughout(tmp_path, caplog):
    losses = {"loss": [3.0, 2.0, 1.5], "loss_cls": [0.0, 0.0, 0.0], "loss_reg": [1.0, 0.0, 0.5]}
    assert split_constant_zero(losses) == ({"loss": losses["loss"], "loss_reg": losses["loss_reg"]}, ["loss_cls"])
    drawn = save_loss_curve([1, 2, 3], losses, str(tmp_path / "curve.png"))
    assert drawn == ["loss", "loss_reg"]  # a loss that is 0 only sometimes is drawn
    with Image.open(tmp_path / "curve.png") as png:
        assert png.format == "PNG"
    # The trainer says which losses it left out.
    history = {"iteration": [1, 2, 3], **losses}
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.trainer"):
        write_loss_curve(history, str(tmp_path))
    assert any(r.getMessage().endswith("(not drawn, 0 at every iteration: loss_cls)") for r in caplog.records)


def _progress_filter(in_place: bool, clock=lambda: 0.0):
    module = load_tool("test/show_progress.py")
    out = io.StringIO()
    return module.ProgressFilter(out, in_place=in_place, clock=clock), out


def _log(message: str, level: str = "INFO") -> str:
    return f"2026-01-01 10:00:00,000 maskrcnn_benchmark.trainer {level}: {message}\n"


def _iteration_line(iteration: int) -> str:
    return _log(f"eta: 0:01:{60 - iteration:02d}  iter: {iteration}  loss: 2.{iteration:04d} (2.5000)  "
                f"time: 0.4000 (0.4100)  data: 0.0100 (0.0100)  lr: 0.000100")


def test_progress_filter_condenses_the_log_for_a_captured_terminal():
    progress, out = _progress_filter(in_place=False)
    progress.feed(_log("Start training from iteration 0 to 100"))
    progress.feed("a line of the config dump\n")
    for iteration in range(1, 101):
        progress.feed(_iteration_line(iteration))
    progress.feed(_log("SOLVER.GRAD_CLIP has no effect", "WARNING"))
    progress.feed(_log("Total training time: 0:00:40 (0.4000 s / it)"))
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "Training iterations 1 to 100"
    assert lines[1] == "iteration 1/100 (1%)  loss 2.0001 (median 2.5000)  0.4100 s/it  eta 0:01:59"
    shown = [int(re.match(r"iteration (\d+)/100", line).group(1)) for line in lines if line.startswith("iteration")]
    assert shown == [1, *range(6, 97, 5), 100]  # every 5% of the run, and the last iteration
    assert lines[-2:] == ["WARNING: SOLVER.GRAD_CLIP has no effect", "Total training time: 0:00:40 (0.4000 s / it)"]
    assert "config dump" not in out.getvalue()


def test_progress_filter_prints_at_least_every_30_seconds_when_captured():
    now = [0.0]
    progress, out = _progress_filter(in_place=False, clock=lambda: now[0])
    progress.feed(_log("Start training from iteration 0 to 1000"))
    for iteration in range(1, 5):
        now[0] = 31.0 * (iteration - 1)
        progress.feed(_iteration_line(iteration))
    assert [line.split()[1] for line in out.getvalue().splitlines()[1:]] == ["1/1000", "2/1000", "3/1000", "4/1000"]


def test_progress_filter_rewrites_one_line_on_a_terminal():
    progress, out = _progress_filter(in_place=True)
    progress.feed(_log("Start training from iteration 3 to 5"))
    for iteration in (4, 5):
        progress.feed(_iteration_line(iteration))
    progress.feed(_log("Loss curve written to out/loss_curve.png"))
    progress.finish()
    assert out.getvalue() == ("Training iterations 4 to 5\n"
                              "\riteration 4/5 (80%)  loss 2.0004 (median 2.5000)  0.4100 s/it  eta 0:01:56\033[K"
                              "\riteration 5/5 (100%)  loss 2.0005 (median 2.5000)  0.4100 s/it  eta 0:01:55\033[K\n"
                              "Loss curve written to out/loss_curve.png\n")
