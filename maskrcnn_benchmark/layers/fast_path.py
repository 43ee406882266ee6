"""Switch between the optimised default implementation and the straightforward reference one.

Both compute the official GLIP function; the reference path follows the official code step by step (full
attention matrices, text padded to MAX_QUERY_LEN, torchvision's deformable conv) and exists to check the
optimised path against, e.g. in tests and benchmarks/bench_model.py.
"""
import contextlib
from typing import Iterator

_reference_mode = False


def fast_path_enabled() -> bool:
    """True unless inside `reference_mode()`."""
    return not _reference_mode


@contextlib.contextmanager
def reference_mode(enabled: bool = True) -> Iterator[None]:
    """Run the model on the reference implementation while the context is active (process-wide switch)."""
    global _reference_mode
    previous = _reference_mode
    _reference_mode = enabled
    try:
        yield
    finally:
        _reference_mode = previous
