"""Checkpoint loading: official format, DDP prefixes, ignored keys, clear failures, refusal of foreign objects."""
import logging
import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from maskrcnn_benchmark.utils.checkpoint import (CheckpointError, Checkpointer, extract_state_dict,
                                                 load_state_dict, read_checkpoint)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)


def _official_style_state(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    state = OrderedDict(("module." + k, v.clone() + 1) for k, v in model.state_dict().items())
    state["module.language_backbone.body.model.embeddings.position_ids"] = torch.arange(512)[None]
    state["module.language_backbone.body.model.pooler.dense.weight"] = torch.zeros(2, 2)
    return state


def test_loads_official_format_with_module_prefix(tmp_path, caplog):
    model, source = Tiny(), Tiny()
    path = tmp_path / "glip.pth"
    torch.save({"model": _official_style_state(source), "iteration": 7}, path)
    with caplog.at_level(logging.WARNING):
        Checkpointer(model).load(str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value + 1)
    assert "not in the model" not in caplog.text  # position_ids and the pooler are ignored by name


def test_model_ema_keyword(tmp_path):
    model, source = Tiny(), Tiny()
    path = tmp_path / "ema.pth"
    torch.save({"model": Tiny().state_dict(), "model_ema": source.state_dict()}, path)
    Checkpointer(model).load(str(path), keyword="model_ema")
    assert torch.equal(model.head.weight, source.head.weight)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    state = Tiny().state_dict()
    state["head.weight"] = torch.zeros(5, 4)
    with pytest.raises(CheckpointError, match=r"head\.weight.*\(5, 4\).*\(2, 4\)"):
        load_state_dict(Tiny(), state)


def test_missing_and_unexpected_keys_are_listed(caplog):
    state = Tiny().state_dict()
    del state["head.bias"]
    state["head.extra"] = torch.zeros(1)
    with caplog.at_level(logging.WARNING):
        report = load_state_dict(Tiny(), state)
    assert report.missing == ["head.bias"]
    assert report.unexpected == ["head.extra"]
    assert "head.bias" in caplog.text and "head.extra" in caplog.text


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": Tiny().state_dict(), "eval_result": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused.*posix.system"):
        read_checkpoint(str(path))
    with pytest.raises(CheckpointError):
        Checkpointer(Tiny()).load(str(path))
    # The opt-in path keeps the tensors and never runs the payload.
    checkpoint = read_checkpoint(str(path), allow_inert_objects=True)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    assert set(extract_state_dict(checkpoint)) == set(Tiny().state_dict())


def test_bare_state_dict_and_bad_layouts(tmp_path):
    assert set(extract_state_dict(Tiny().state_dict())) == {"backbone.weight", "backbone.bias", "head.weight",
                                                            "head.bias"}
    with pytest.raises(CheckpointError, match="no state_dict under 'model'"):
        extract_state_dict({"iteration": 3})


def test_save_is_atomic_and_tags_last_checkpoint(tmp_path):
    model = Tiny()
    ckpt = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True)
    ckpt.save("model_0000010", iteration=10)
    assert ckpt.get_checkpoint_file() == "model_0000010.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000010.pth"]
    other = Tiny()
    extra = Checkpointer(other, save_dir=str(tmp_path)).load()
    assert extra == {"iteration": 10}
    assert torch.equal(other.head.weight, model.head.weight)
