"""Shared pytest fixtures: paths of the trimmed golden data and the small golden model's pieces."""
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SMALL = FIXTURES / "small"
sys.path.insert(0, str(FIXTURES))

from make_fixtures import load_small_state_dict  # noqa: E402


@pytest.fixture(scope="session")
def small_case() -> dict:
    """Inputs and expected outputs of the small golden model (see tests/fixtures/make_fixtures.py)."""
    return torch.load(SMALL / "case.pt", weights_only=True)


@pytest.fixture(scope="session")
def small_state_dict() -> dict:
    """The small golden model's full state_dict."""
    return load_small_state_dict()


def small_raw_cfg():
    """The small golden model's full config dump as a plain yacs CfgNode (no project defaults involved)."""
    from yacs.config import CfgNode

    with open(SMALL / "config.yaml") as f:
        cfg = CfgNode.load_cfg(f)
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_PATH = str(SMALL / "bert")
    return cfg
