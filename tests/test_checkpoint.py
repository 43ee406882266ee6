"""Checkpoint loading: official format, DDP prefixes, ignored keys, clear failures, refusal of foreign objects,
of wrong weights and of evaluation without weights, and failed writes."""
import errno
import io
import logging
import os
from collections import OrderedDict

import pytest
import torch
from conftest import SMALL
from helpers import load_tool
from PIL import Image
from torch import nn

import maskrcnn_benchmark.utils.checkpoint as checkpoint_module
from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.engine.predictor_glip import GLIPPredictor
from maskrcnn_benchmark.utils.checkpoint import (
    Checkpointer,
    CheckpointError,
    DetectronCheckpointer,
    extract_state_dict,
    load_state_dict,
    read_checkpoint,
)


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


def test_keep_last_prunes_only_this_runs_checkpoints(tmp_path):
    earlier = Checkpointer(Tiny(), save_dir=str(tmp_path), save_to_disk=True)
    for iteration in (1, 2, 3):
        earlier.save(f"model_{iteration:07d}", iteration=iteration)
    # A run started afresh in the folder (--no-resume, or the launch scripts' --overwrite) keeps its own newest
    # checkpoint and leaves the earlier run's files alone.
    fresh = Checkpointer(Tiny(), save_dir=str(tmp_path), save_to_disk=True, keep_last=1)
    assert fresh.load(force=True) == {}
    for iteration in (10, 20):
        fresh.save(f"model_{iteration:07d}", iteration=iteration)
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == [
        "model_0000001.pth", "model_0000002.pth", "model_0000003.pth", "model_0000020.pth"]
    # A resumed run owns the folder's periodic checkpoints.
    resumed = Checkpointer(Tiny(), save_dir=str(tmp_path), save_to_disk=True, keep_last=2)
    assert resumed.load() == {"iteration": 20}
    resumed.save("model_0000030", iteration=30)
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == ["model_0000020.pth", "model_0000030.pth"]


def test_the_ema_starts_at_the_loaded_weights_and_continues_on_resume(tmp_path):
    from maskrcnn_benchmark.utils.ema import ModelEma

    pretrained = Tiny()
    torch.save({"model": pretrained.state_dict()}, tmp_path / "pretrained.pth")
    model = Tiny()
    ema = ModelEma(model, decay=0.5)  # built from the random init, before anything is loaded
    run = tmp_path / "run"
    checkpointer = Checkpointer(model, save_dir=str(run), save_to_disk=True, model_ema=ema)
    assert checkpointer.load(str(tmp_path / "pretrained.pth")) == {}
    for key, value in pretrained.state_dict().items():
        assert torch.equal(ema.state_dict()[key], value), key
    with torch.no_grad():
        model.head.weight.add_(1.0)
    ema.update(model)
    averaged = {key: value.clone() for key, value in ema.state_dict().items()}
    checkpointer.save("model_0000001", iteration=1)

    resumed = Tiny()
    resumed_ema = ModelEma(resumed, decay=0.5)
    assert Checkpointer(resumed, save_dir=str(run), model_ema=resumed_ema).load() == {"iteration": 1}
    assert all(torch.equal(resumed_ema.state_dict()[key], value) for key, value in averaged.items())
    # Weights only (--skip_optimizer_resume): the average starts again at the loaded weights.
    Checkpointer(resumed, save_dir=str(run), model_ema=resumed_ema).load(skip_optimizer=True)
    assert torch.equal(resumed_ema.state_dict()["head.weight"], model.head.weight)
    # A run without EMA resuming from one with it does not carry the old average along.
    assert "model_ema" not in Checkpointer(Tiny(), save_dir=str(run)).load()


# ---- wrong weights -------------------------------------------------------------------------------------------------

class OtherNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)


WRONG_WEIGHTS = {
    "another_network": lambda: OtherNetwork().state_dict(),
    "empty_model_entry": lambda: {},
    "unknown_prefix": lambda: {f"detector.{k}": v for k, v in Tiny().state_dict().items()},
    "most_keys_missing": lambda: {"head.bias": torch.zeros(2)},
}


@pytest.mark.parametrize("case", sorted(WRONG_WEIGHTS))
def test_checkpoint_missing_most_model_keys_is_refused(tmp_path, case):
    path = tmp_path / "wrong.pth"
    torch.save({"model": WRONG_WEIGHTS[case]()}, path)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"{path}: [34] of the model's 4 weights are not in the checkpoint "
                                              r"\(backbone\.bias, .*MODEL\.ALLOW_MISSING_WEIGHTS"):
        DetectronCheckpointer(get_cfg_defaults(), model).load(str(path))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_partial_load_when_allowed(tmp_path, caplog):
    path = tmp_path / "backbone_only.pth"
    source = Tiny()
    torch.save({"model": {"backbone.weight": source.backbone.weight.detach().clone()}}, path)
    model = Tiny()
    Checkpointer(model).load(str(path), allow_missing_weights=True)
    assert torch.equal(model.backbone.weight, source.backbone.weight)
    cfg = get_cfg_defaults()
    cfg.MODEL.ALLOW_MISSING_WEIGHTS = True
    DetectronCheckpointer(cfg, Tiny()).load(str(path))
    with pytest.raises(CheckpointError, match="3 of the model's 4 weights"):
        load_state_dict(Tiny(), {"backbone.weight": source.backbone.weight}, source="backbone_only")
    report = load_state_dict(Tiny(), {"backbone.weight": source.backbone.weight}, allow_missing_weights=True)
    assert report.missing == ["backbone.bias", "head.bias", "head.weight"]


def test_half_of_the_keys_still_load_with_a_warning(caplog):
    state = Tiny().state_dict()
    del state["head.weight"], state["head.bias"]
    report = load_state_dict(Tiny(), state)
    assert report.missing == ["head.bias", "head.weight"]


# ---- evaluating or demoing with no weight at all -------------------------------------------------------------------

def _load_tool(name: str):
    return load_tool(f"tools/{name}.py")


def test_evaluation_without_weights_is_an_error(tmp_path):
    argv = ["--config-file", str(SMALL / "config.yaml"), "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu",
            "MODEL.WEIGHT", ""]
    with pytest.raises(CheckpointError, match=r"^Nothing to evaluate: no --weight, MODEL.WEIGHT is empty and "
                                              rf"OUTPUT_DIR '{tmp_path}' has no last_checkpoint.*Pass --weight "
                                              r"CHECKPOINT.*MODEL.ALLOW_MISSING_WEIGHTS True"):
        _load_tool("test_grounding_net").main(argv)


def test_evaluation_weights_may_come_from_the_run_folder_or_an_explicit_opt_in(tmp_path):
    check_weights_given = _load_tool("test_grounding_net").check_weights_given
    cfg = get_cfg_defaults()
    cfg.OUTPUT_DIR, cfg.MODEL.WEIGHT = str(tmp_path), ""
    with pytest.raises(CheckpointError, match="Nothing to evaluate"):
        check_weights_given(None, cfg)
    check_weights_given("model_final.pth", cfg)
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    check_weights_given(None, cfg)  # OUTPUT_DIR's last checkpoint is evaluated, as officially
    (tmp_path / "last_checkpoint").unlink()
    cfg.MODEL.ALLOW_MISSING_WEIGHTS = True
    check_weights_given(None, cfg)


def test_demo_without_weights_is_an_error(tmp_path):
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (90, 120, 30)).save(image)
    argv = [str(image), "person. car", "--config-file", str(SMALL / "config.yaml"), "--out", str(tmp_path / "o.png"),
            "MODEL.DEVICE", "cpu", "MODEL.WEIGHT", ""]
    with pytest.raises(CheckpointError, match=r"^GLIPPredictor has no weights.*--weight CHECKPOINT.*"
                                              r"MODEL.ALLOW_MISSING_WEIGHTS True"):
        _load_tool("demo").main(argv)
    assert not (tmp_path / "o.png").exists()


def test_predictor_runs_the_untrained_model_only_when_asked():
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(SMALL / "config.yaml"))
    cfg.merge_from_list(["MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
                         "MODEL.WEIGHT", ""])
    with pytest.raises(CheckpointError, match="GLIPPredictor has no weights"):
        GLIPPredictor(cfg)
    cfg.MODEL.ALLOW_MISSING_WEIGHTS = True
    assert GLIPPredictor(cfg).model is not None


# ---- disk full while writing --------------------------------------------------------------------------------------

class _DiskFullFile(io.FileIO):
    """A file whose writes fail with ENOSPC once `budget` bytes were written, like a file system that fills up."""

    budget = 300

    def write(self, data) -> int:
        if len(data) > _DiskFullFile.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _DiskFullFile.budget -= len(data)
        return super().write(data)


def _save_then_fail_second_save(tmp_path, monkeypatch, failing_fdopen):
    model = Tiny()
    checkpointer = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True)
    checkpointer.save("model_final", iteration=1)
    previous = (tmp_path / "model_final.pth").read_bytes()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    monkeypatch.setattr(checkpoint_module.os, "fdopen", failing_fdopen)
    with pytest.raises(CheckpointError) as caught:
        checkpointer.save("model_final", iteration=2)
    monkeypatch.undo()
    assert (tmp_path / "model_final.pth").read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert read_checkpoint(str(tmp_path / "model_final.pth"))["iteration"] == 1
    return str(caught.value), caught.value.__cause__


@pytest.mark.parametrize("buffered", [False, True])
def test_disk_full_during_checkpoint_write(tmp_path, monkeypatch, buffered):
    """Unbuffered, torch's zip writer meets the ENOSPC and raises "[enforce fail ...] unexpected pos"; buffered,
    the ENOSPC comes from the final flush."""
    _DiskFullFile.budget = 300

    def disk_full_fdopen(fd, mode):
        raw = _DiskFullFile(fd, "w")
        return io.BufferedWriter(raw) if buffered else raw

    message, cause = _save_then_fail_second_save(tmp_path, monkeypatch, disk_full_fdopen)
    path = tmp_path / "model_final.pth"
    assert message.startswith(f"Could not write the checkpoint {path}: the disk is full (no space left on device; ")
    assert f"{path} was left as it was" in message
    if not buffered:
        assert isinstance(cause, RuntimeError) and "unexpected pos" in str(cause)


def test_failed_checkpoint_write_names_the_path(tmp_path, monkeypatch):
    class FailingFile(io.FileIO):
        def write(self, data) -> int:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    message, _ = _save_then_fail_second_save(tmp_path, monkeypatch, lambda fd, mode: FailingFile(fd, "w"))
    path = tmp_path / "model_final.pth"
    assert message.startswith(f"Could not write the checkpoint {path}: the write failed")
    assert "Input/output error" in message and "free" in message


def test_disk_full_while_tagging_last_checkpoint(tmp_path, monkeypatch):
    checkpointer = Checkpointer(Tiny(), save_dir=str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000001")
    real_open = open

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith("last_checkpoint.tmp"):
            handle.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return handle

    monkeypatch.setattr("builtins.open", open_on_full_disk)
    with pytest.raises(CheckpointError, match=rf"{tmp_path}/last_checkpoint: the disk is full"):
        checkpointer.save("model_0000002")
    monkeypatch.undo()
    assert checkpointer.get_checkpoint_file() == "model_0000001.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000002.pth"]
