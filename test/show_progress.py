"""Condensed training progress for the terminal, read from the training log on stdin (the launch scripts pipe
the full output into the log file and through this filter).

Prints one line per training log line: iteration / total, loss, seconds per iteration and ETA. On a terminal the
line is rewritten in place; otherwise (output captured) a line is printed every ~5% of the run or every
30 s. Warnings, the end of training and the end of the evaluation are passed on as one-line notes.
Only the Python standard library is used, so the filter starts at once.
"""
import re
import sys
import time
from collections.abc import Callable
from typing import TextIO

START = re.compile(r"Start training from iteration (\d+) to (\d+)")
ITERATION = re.compile(r"eta: (\S+)\s+iter: (\d+)\s+loss: (\S+) \((\S+)\)")
ITERATION_TIME = re.compile(r"\btime: (\S+) \((\S+)\)")
# "<date> <time> <logger name> LEVEL: message" (maskrcnn_benchmark.utils.logger.LOG_FORMAT)
LOG_PREFIX = re.compile(r"^\S+ \S+ \S+ (INFO|WARNING|ERROR): ")
# Passed on as notes (the throughput comes in the final report).
NOTES = ("Total training time", "Loss curve written", "Total inference time")
CAPTURED_LINES = 20  # progress lines of a whole run when the output is not a terminal
CAPTURED_SECONDS = 30.0  # ...or one at least this often


class ProgressFilter:
    """Turns training log lines into terminal progress lines (see the module docstring)."""

    def __init__(self, out: TextIO, in_place: bool, clock: Callable[[], float] = time.monotonic):
        self.out = out
        self.in_place = in_place
        self.clock = clock
        self.first, self.total = 0, 0
        self.last_printed_iteration, self.last_printed_time = None, 0.0
        self.line_open = False  # an in-place progress line without its newline yet

    def feed(self, line: str) -> None:
        """Handle one log line."""
        start = START.search(line)
        if start:
            self.first, self.total = int(start.group(1)), int(start.group(2))
            self._note(f"Training iterations {self.first + 1} to {self.total}")
            return
        iteration = ITERATION.search(line)
        if iteration:
            self._progress(line, iteration)
            return
        prefix = LOG_PREFIX.match(line)
        message = line[prefix.end():].strip() if prefix else ""
        if prefix and (prefix.group(1) != "INFO" or message.startswith(NOTES)):
            self._note(message if prefix.group(1) == "INFO" else f"{prefix.group(1)}: {message}")

    def finish(self) -> None:
        """End an open in-place line."""
        if self.line_open:
            self.out.write("\n")
            self.line_open = False
        self.out.flush()

    def _progress(self, line: str, match: re.Match) -> None:
        eta, iteration, loss, median_loss = match.group(1), int(match.group(2)), match.group(3), match.group(4)
        total = max(self.total, iteration)
        timing = ITERATION_TIME.search(line)
        speed = f"  {timing.group(2)} s/it" if timing else ""
        text = (f"iteration {iteration}/{total} ({100 * iteration // max(total, 1)}%)  loss {loss} "
                f"(median {median_loss}){speed}  eta {eta}")
        if self.in_place:
            self.out.write(f"\r{text}\033[K")
            self.line_open = True
            self.out.flush()
        elif self._due(iteration, total):
            self.out.write(text + "\n")
            self.out.flush()
            self.last_printed_iteration, self.last_printed_time = iteration, self.clock()

    def _due(self, iteration: int, total: int) -> bool:
        """Whether a captured-output progress line is due at `iteration`."""
        if self.last_printed_iteration is None or iteration >= total:
            return True
        step = max(1, (total - self.first) // CAPTURED_LINES)
        return (iteration - self.last_printed_iteration >= step
                or self.clock() - self.last_printed_time >= CAPTURED_SECONDS)

    def _note(self, text: str) -> None:
        self.finish()
        self.out.write(text + "\n")
        self.out.flush()


def main() -> None:
    """Filter stdin to stdout; in place when stdout is a terminal."""
    progress = ProgressFilter(sys.stdout, in_place=sys.stdout.isatty())
    for line in sys.stdin:
        progress.feed(line)
    progress.finish()


if __name__ == "__main__":
    main()
