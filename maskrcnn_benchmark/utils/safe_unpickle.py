"""Read checkpoints that hold foreign pickled objects without ever running their code.

torch.load(weights_only=True) refuses such files (for example the official `model_best.pth`, which stores an
evaluation-result object). `load_with_inert_objects` rebuilds tensors and plain containers through torch's own
allow-list and turns every other global into an inert placeholder that records its name and does nothing else.
"""
import pickle
import types
from typing import Any, List, Set

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


def _make_pickle_module(skipped: Set[str]) -> types.ModuleType:
    allowed = _weights_only_unpickler._get_allowed_globals()

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            """The allowed global module.name; any other is recorded and replaced by an inert stand-in."""
            qualified = f"{module}.{name}"
            if qualified in allowed:
                return allowed[qualified]
            skipped.add(qualified)
            return _inert_class(qualified)

    module = types.ModuleType("restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.load = pickle.load
    module.__name__ = "restricted_pickle"
    return module


def load_with_inert_objects(path: str) -> "tuple[Any, List[str]]":
    """Load `path` keeping tensors and containers; return the object and the sorted names of skipped classes."""
    skipped: Set[str] = set()
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_make_pickle_module(skipped))
    return obj, sorted(skipped)
