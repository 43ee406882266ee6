"""Small helpers: folders, config dumps, seeding and random-state snapshots, the loss-curve plot."""
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .comm import is_main_process


def mkdir(path: str) -> None:
    """Create `path` and its parents if needed."""
    os.makedirs(path, exist_ok=True)


def save_config(cfg, path: str) -> None:
    """Write the full config as YAML (rank 0 only)."""
    if is_main_process():
        with open(path, "w") as f:
            f.write(cfg.dump())


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices) random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """A snapshot of every random generator of this process, made only of tensors and plain Python values.

    Plain values keep it loadable by `torch.load(weights_only=True)`.
    """
    version, python_state, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        state["npu"] = npu.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by `get_rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "npu" in state and getattr(torch, "npu", None) is not None:
        torch.npu.set_rng_state_all(state["npu"])


def split_constant_zero(losses: dict[str, list[float]]) -> tuple[dict[str, list[float]], list[str]]:
    """The series with a non-zero value somewhere, and the names of those that are 0 at every iteration.

    In GLIP-T, loss_cls is always 0 (the dot-product token loss replaces the classification loss); a flat line at
    0 only hides the other curves' scale.
    """
    shown = {name: values for name, values in losses.items() if any(value != 0 for value in values)}
    return shown, [name for name in losses if name not in shown]


def save_loss_curve(iterations: Sequence[int], losses: dict[str, list[float]], path: str) -> list[str]:
    """Plot each loss against the iteration into a PNG (matplotlib, Agg backend); returns the names drawn.

    Losses that are 0 at every iteration are not drawn; a note under the plot names them.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown, always_zero = split_constant_zero(losses)
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, values in shown.items():
        axis.plot(iterations, values, label=name, linewidth=1.5 if name == "loss" else 1.0)
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    axis.grid(True, alpha=0.3)
    if shown:
        axis.legend()
    if always_zero:
        figure.text(0.01, 0.01, f"Not drawn, 0 at every iteration: {', '.join(always_zero)}", fontsize=8)
    figure.tight_layout(rect=(0, 0.04 if always_zero else 0, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return [line.get_label() for line in axis.get_lines()]
