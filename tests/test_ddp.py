"""Distributed training: 2 CPU processes (torchrun, gloo) at global batch 2 train like 1 process at batch 2."""
import subprocess

import numpy as np
import torch

from maskrcnn_benchmark.utils.checkpoint import read_checkpoint
from test_trainer import ROOT, _env, reference_run, small_train_options, train_net_command


def test_two_processes_match_one_process(tmp_path_factory):
    reference = reference_run(tmp_path_factory)  # 1 process, global batch 2 (both images), 5 iterations
    output = reference["root"] / "ddp"
    command = train_net_command(output, small_train_options(reference["weights"]), "--early_stop_iteration", "3")
    command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(command, cwd=ROOT, env=_env(DATASET=str(reference["data"])), capture_output=True,
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
