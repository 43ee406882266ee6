"""Read checkpoints that hold foreign pickled objects without ever running their code.

torch.load(weights_only=True) refuses such files (for example the official `model_best.pth`, which stores an
evaluation-result object). `load_with_inert_objects` rebuilds tensors and plain containers through torch's own
allow-list and turns every other global into an inert placeholder that records its name and does nothing else.
"""
import pickle
import types
from typing import Any, BinaryIO

import torch
from torch import _weights_only_unpickler


class InertObject:
    """Stand-in for a pickled object whose class was not trusted; it keeps only the class name."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        """Drop the state: nothing of an untrusted object is kept."""

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


def _inert_class(qualified_name: str) -> type:
    return type("Inert", (InertObject,), {"qualified_name": qualified_name})


def _make_pickle_module(skipped: set[str]) -> types.ModuleType:
    allowed = _weights_only_unpickler._get_allowed_globals()

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            """The allowed global module.name; any other is recorded and replaced by an inert stand-in."""
            qualified = f"{module}.{name}"
            if qualified in allowed:
                return allowed[qualified]
            skipped.add(qualified)
            return _inert_class(qualified)

    def load(file: BinaryIO, **kwargs: Any) -> Any:
        """One pickle from `file` through the restricted unpickler (torch reads a legacy file's header with it)."""
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    # Every pickle of the file goes through find_class above: torch's legacy loader reads the magic number,
    # protocol version, system info and storage keys with `load`, so the unrestricted pickle.load would run
    # whatever those header pickles call.
    module.load = load
    module.__name__ = "restricted_pickle"
    return module


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle that should hold plain values refers to a class or function."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickles plain values only: any global (class or function) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        """Refuse every global."""
        raise ForbiddenGlobalError(f"its first pickle refers to {module}.{name}")


def read_first_pickled_value(file: BinaryIO) -> Any:
    """The first pickle of `file`, which may hold plain values only (numbers, strings, containers), never globals."""
    return _NoGlobalsUnpickler(file).load()


def load_with_inert_objects(path: str) -> "tuple[Any, list[str]]":
    """Load `path` keeping tensors and containers; return the object and the sorted names of skipped classes."""
    skipped: set[str] = set()
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_make_pickle_module(skipped))
    return obj, sorted(skipped)
