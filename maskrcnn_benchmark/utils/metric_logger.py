"""Smoothed training metrics for the periodic log line, with optional TensorBoard output."""
from collections import deque

import torch

from .comm import is_main_process


class SmoothedValue:
    """A series of values: the latest, the median/mean over a window, and the mean over everything."""

    def __init__(self, window_size: int = 20):
        self.deque: deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.value = float("nan")

    def update(self, value: float) -> None:
        """Add one value."""
        self.deque.append(value)
        self.value = value
        self.count += 1
        self.total += value

    @property
    def median(self) -> float:
        """Median over the window."""
        return torch.tensor(list(self.deque)).median().item()

    @property
    def avg(self) -> float:
        """Mean over the window."""
        return torch.tensor(list(self.deque)).mean().item()

    @property
    def global_avg(self) -> float:
        """Mean over every value so far."""
        return self.total / max(self.count, 1)


class MetricLogger:
    """Named SmoothedValues, printed as `name: latest (window median)`."""

    def __init__(self, delimiter: str = "\t", window_size: int = 20):
        self.meters: dict[str, SmoothedValue] = {}
        self.delimiter = delimiter
        self.window_size = window_size

    def update(self, **values) -> None:
        """Add one value (a Python number or a one-element tensor) to each named meter."""
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if name not in self.meters:
                self.meters[name] = SmoothedValue(self.window_size)
            self.meters[name].update(float(value))

    def __getattr__(self, attr: str) -> SmoothedValue:
        meters = self.__dict__.get("meters", {})
        if attr in meters:
            return meters[attr]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter.value:.4f} ({meter.median:.4f})"
                                   for name, meter in self.meters.items())

    def write_scalars(self, iteration: int) -> None:
        """Record the latest values at `iteration` (TensorBoard subclass; nothing to do here)."""

    def close(self) -> None:
        """Release any writer."""


TENSORBOARD_MISSING = ("--use-tensorboard needs TensorBoard, an optional extra that the README install leaves out. "
                       "Install it with `pip install tensorboard` (or `pip install -e \".[tensorboard]\"` in the "
                       "checkout), or train without --use-tensorboard.")


def summary_writer_class() -> type:
    """SummaryWriter from torch.utils.tensorboard, else from tensorboardX; an ImportError saying how to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as error:
            raise ImportError(TENSORBOARD_MISSING) from error
    return SummaryWriter


class TensorboardLogger(MetricLogger):
    """MetricLogger that also writes the latest values to TensorBoard event files (rank 0 only)."""

    def __init__(self, log_dir: str, start_iter: int = 0, delimiter: str = "\t", window_size: int = 20):
        super().__init__(delimiter, window_size)
        self.iteration = start_iter
        self.writer = self._make_writer(log_dir) if is_main_process() else None

    @staticmethod
    def _make_writer(log_dir: str):
        """A SummaryWriter writing to `log_dir`."""
        return summary_writer_class()(log_dir)

    def write_scalars(self, iteration: int | None = None) -> None:
        """Write the latest value of every meter at `iteration`."""
        self.iteration = self.iteration + 1 if iteration is None else iteration
        if self.writer is not None:
            for name, meter in self.meters.items():
                self.writer.add_scalar(name, meter.value, self.iteration)

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
