"""Distributed training: 2 CPU processes (torchrun, gloo) at global batch 2 train like 1 process at batch 2; a hung
process ends the run after SOLVER.DDP_TIMEOUT_MINUTES."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, free_port, reference_run, small_train_options, subprocess_env, train_net_command

from maskrcnn_benchmark.utils.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # two-process runs of tools/train_net.py (about a minute)


def test_two_processes_match_one_process(tmp_path_factory):
    reference = reference_run(tmp_path_factory)  # 1 process, global batch 2 (both images), 5 iterations
    output = reference["root"] / "ddp"
    command = train_net_command(output, small_train_options(reference["weights"]), "--early_stop_iteration", "3")
    command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(command, cwd=ROOT, env=subprocess_env(DATASET=str(reference["data"])), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    log = (output / "log.txt").read_text()
    assert "Using 2 processes on cpu" in log
    # Rank 0 alone logs and writes checkpoints; each process read one image per iteration.
    assert result.stdout.count("  iter: 1  ") == 1
    assert sorted(p.name for p in output.glob("*.pth")) == ["model_0000003.pth"]

    ddp = read_checkpoint(str(output / "model_0000003.pth"))
    single = read_checkpoint(str(reference["output"] / "model_0000003.pth"))
    assert ddp["iteration"] == single["iteration"] == 3
    assert ddp["loss_history"]["iteration"] == [1, 2, 3]
    for name in ("loss", "loss_reg", "loss_centerness", "loss_dot_product_token"):
        np.testing.assert_allclose(ddp["loss_history"][name], single["loss_history"][name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    assert len(ddp["rng_states"]) == 2  # every process's random state travels in the checkpoint
    for entry in ("model", "model_ema"):
        for key, value in single[entry].items():
            torch.testing.assert_close(ddp[entry][key], value, rtol=0, atol=1e-5, msg=f"{entry}.{key}")


# A process of a 2-process gloo group on CPU: joins with SOLVER.DDP_TIMEOUT_MINUTES from the command line, then
# rank 1 stops itself (SIGSTOP, a hung process) and rank 0 calls the trainer's first collective of an iteration
# (argument "any_rank") or the trainer's backward pass of a DDP model (argument "backward").
HUNG_RANK_WORKER = """
import os, signal, sys, time
import torch
from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.engine.trainer import backward
from maskrcnn_benchmark.utils.comm import any_rank
from maskrcnn_benchmark.utils.device import init_distributed

cfg = get_cfg_defaults()
cfg.merge_from_list(["SOLVER.DDP_TIMEOUT_MINUTES", sys.argv[1]])
init_distributed(torch.device("cpu"), cfg.SOLVER.DDP_TIMEOUT_MINUTES)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
if os.environ["RANK"] == "1":
    os.kill(os.getpid(), signal.SIGSTOP)
start = time.perf_counter()
try:
    if sys.argv[2] == "any_rank":
        any_rank(False, torch.device("cpu"))
    else:
        backward(model(torch.ones(2, 4)).sum(), optimizer)
finally:
    print(f"waited {time.perf_counter() - start:.1f} s", flush=True)
"""


@pytest.mark.parametrize("collective, name", [("any_rank", "all_reduce (any_rank)"),
                                              ("backward", "the gradient all_reduce of DDP's backward pass")])
def test_a_hung_rank_fails_the_other_rank_after_the_ddp_timeout_naming_the_collective(collective, name):
    port = free_port()
    ranks = [subprocess.Popen([sys.executable, "-c", HUNG_RANK_WORKER, "0.05", collective], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=subprocess_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for rank in (0, 1)]
    try:
        stdout, stderr = ranks[0].communicate(timeout=60)
        assert ranks[1].poll() is None  # the stopped rank is still there, hung
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert ranks[0].returncode != 0
    waited = float(re.search(r"waited ([\d.]+) s", stdout).group(1))
    assert 2.0 < waited < 15.0  # SOLVER.DDP_TIMEOUT_MINUTES 0.05 = 3 s, not torch's 30 minutes
    assert f"CollectiveError: {name} failed on rank 0 of 2: another process did not take part " \
           "within the timeout (SOLVER.DDP_TIMEOUT_MINUTES)" in stderr, stderr[-3000:]
