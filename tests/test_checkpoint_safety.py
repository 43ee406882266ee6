"""Checkpoint files from untrusted or damaged sources: no pickle runs code, and a file that is not a readable torch
checkpoint gives one CheckpointError naming the file and what is wrong with it."""
import io
import operator
import os
import pickle
import re

import pytest
import torch
from PIL import Image
from torch import nn
from torch.serialization import MAGIC_NUMBER

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.utils.checkpoint import Checkpointer, CheckpointError, DetectronCheckpointer, read_checkpoint
from maskrcnn_benchmark.utils.safe_unpickle import load_with_inert_objects


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)


# ---- 1. no pickle runs code ------------------------------------------------------------------------------------

class _ShellCommand:
    """Pickles as a call of os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _MagicAfterCommand:
    """Pickles as operator.getitem((os.system(command), MAGIC_NUMBER), 1): torch's magic number, after the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (operator.getitem, ((_ShellCommand(self.command), MAGIC_NUMBER), 1))


def _write_legacy_with_malicious_header(path, marker) -> None:
    """A real legacy-format checkpoint whose first pickle (the magic number) is replaced by one that runs a command."""
    buffer = io.BytesIO()
    torch.save({"model": Tiny().state_dict()}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    header = io.BytesIO(data)
    assert pickle.load(header) == MAGIC_NUMBER
    path.write_bytes(pickle.dumps(_MagicAfterCommand(f"touch {marker}"), protocol=2) + data[header.tell():])


def _write_raw_pickle(path, marker) -> None:
    path.write_bytes(pickle.dumps(_ShellCommand(f"touch {marker}")))


MALICIOUS_FILES = {"legacy_header": _write_legacy_with_malicious_header, "raw_pickle": _write_raw_pickle}
LOADERS = {
    "read_checkpoint": lambda path: read_checkpoint(path),
    "read_checkpoint_inert": lambda path: read_checkpoint(path, allow_inert_objects=True),
    "DetectronCheckpointer": lambda path: DetectronCheckpointer(get_cfg_defaults(), Tiny()).load(path),
    "DetectronCheckpointer_inert": lambda path: DetectronCheckpointer(get_cfg_defaults(), Tiny()).load(
        path, allow_inert_objects=True),
}


def _error_of(load, path: str) -> "Exception | None":
    """The exception that load(path) raised (None when it returned): the marker is checked whatever happened."""
    try:
        load(path)
    except Exception as error:  # noqa: BLE001 - any outcome is checked by the caller
        return error
    return None


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("kind", sorted(MALICIOUS_FILES))
def test_malicious_pickles_never_run(tmp_path, kind, loader):
    marker = tmp_path / "COMMAND_RAN"
    path = tmp_path / "evil.pth"
    MALICIOUS_FILES[kind](path, marker)
    error = _error_of(LOADERS[loader], str(path))
    assert not marker.exists(), "loading the file ran the command it pickles"
    assert isinstance(error, CheckpointError), error
    assert re.match(rf"{path} is a pickle file but not a torch checkpoint", str(error))


@pytest.mark.parametrize("kind", sorted(MALICIOUS_FILES))
def test_inert_loader_restricts_every_pickle_of_the_file(tmp_path, kind):
    """The inert loader itself, without read_checkpoint's header check: the header pickles are restricted too."""
    marker = tmp_path / "COMMAND_RAN"
    path = tmp_path / "evil.pth"
    MALICIOUS_FILES[kind](path, marker)
    error = _error_of(load_with_inert_objects, str(path))
    assert not marker.exists(), "loading the file ran the command it pickles"
    assert type(error) is RuntimeError and "magic number" in str(error), error


def test_legacy_format_checkpoints_still_load(tmp_path):
    model, source = Tiny(), Tiny()
    path = tmp_path / "legacy.pth"
    torch.save({"model": source.state_dict(), "iteration": 4}, path, _use_new_zipfile_serialization=False)
    for allow_inert_objects in (False, True):
        assert read_checkpoint(str(path), allow_inert_objects=allow_inert_objects)["iteration"] == 4
    Checkpointer(model).load(str(path))
    assert torch.equal(model.head.weight, source.head.weight)


# ---- 6. unreadable files -------------------------------------------------------------------------------------------

def _checkpoint_bytes(legacy: bool) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": Tiny().state_dict()}, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _image_bytes(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format=image_format)
    return buffer.getvalue()


UNREADABLE = {
    "truncated_zip": (lambda: _checkpoint_bytes(False)[:600], "is truncated or corrupt"),
    "truncated_zip_tail": (lambda: _checkpoint_bytes(False)[:-10], "is truncated or corrupt"),
    "truncated_legacy": (lambda: _checkpoint_bytes(True)[:300], "is truncated or corrupt"),
    "empty": (lambda: b"", r"is empty \(0 bytes\)"),
    "text": (lambda: b"epoch 3 loss 0.25\nsee the log\n", "is a text file"),
    "html": (lambda: b"<!DOCTYPE html>\n<html><body>404</body></html>\n", "is an HTML page"),
    "git_lfs_pointer": (lambda: b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n",
                        "is a Git LFS pointer"),
    "jpeg": (lambda: _image_bytes("JPEG"), "is a JPEG image"),
    "png": (lambda: _image_bytes("PNG"), "is a PNG image"),
    "plain_pickle": (lambda: pickle.dumps({"weights": [1, 2]}), "is a pickle file but not a torch checkpoint"),
    "random_bytes": (lambda: bytes(range(7, 250)), "is not a checkpoint"),
}


@pytest.mark.parametrize("allow_inert_objects", [False, True])
@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_file_gives_one_clear_error(tmp_path, case, allow_inert_objects):
    make, expected = UNREADABLE[case]
    path = tmp_path / "model.pth"
    path.write_bytes(make())
    with pytest.raises(CheckpointError, match=rf"^{path} {expected}") as caught:
        read_checkpoint(str(path), allow_inert_objects=allow_inert_objects)
    assert "allow_inert_objects" not in str(caught.value)


def test_unreadable_file_through_the_checkpointer(tmp_path):
    path = tmp_path / "model_final.pth"
    path.write_bytes(_checkpoint_bytes(False)[:600])
    with pytest.raises(CheckpointError, match=rf"{path} is truncated or corrupt"):
        DetectronCheckpointer(get_cfg_defaults(), Tiny()).load(str(path))


def test_folder_given_as_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=rf"{tmp_path} is a folder"):
        read_checkpoint(str(tmp_path))
