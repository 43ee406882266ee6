"""Image files as users have them: 16-bit PNGs, extreme aspect ratios, float TIFFs, EXIF-rotated photos."""
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL
from helpers import load_tool, small_predictor_cfg
from PIL import Image

from maskrcnn_benchmark.data.datasets.coco import COCODataset
from maskrcnn_benchmark.data.transforms import build_transforms
from maskrcnn_benchmark.engine.predictor_glip import GLIPPredictor
from maskrcnn_benchmark.modeling.detector import build_detection_model

OPTS = ["MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "250", "MODEL.ATSS.INFERENCE_TH", "0.01"]
EXIF_ORIENTATION = 0x0112
ROTATED_90_CLOCKWISE = 6  # the stored pixels must be turned 90 degrees clockwise to be upright


def _cfg():
    return small_predictor_cfg(OPTS)


def _dataset(folder: Path, files: dict, transforms=None) -> COCODataset:
    """A COCO dataset of the given {file name: (width, height)} images, one box each."""
    images = [{"id": k + 1, "file_name": name, "width": size[0], "height": size[1]}
              for k, (name, size) in enumerate(files.items())]
    annotations = [{"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4,
                    "iscrowd": 0} for k in range(len(images))]
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 1, "name": "thing"}]}))
    return COCODataset(str(ann_file), str(folder), remove_images_without_annotations=False, transforms=transforms)


def _write_16_bit_rgb_png(path: Path, pixels: np.ndarray) -> None:
    """A 48-bit (16 bits per channel) RGB PNG, written chunk by chunk (PIL cannot save this mode)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16_bit_png_images_are_scaled_to_8_bits(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500  # 0 .. 59500
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    colour = np.stack([grey, 65535 - grey, np.full_like(grey, 300)], axis=-1)
    _write_16_bit_rgb_png(tmp_path / "rgb16.png", colour)
    with Image.open(tmp_path / "grey16.png") as stored:
        assert stored.mode == "I;16"  # what GLIP's convert("RGB") clips to white

    dataset = _dataset(tmp_path, {"grey16.png": (10, 12), "rgb16.png": (10, 12)})
    grey_image, colour_image = (np.asarray(dataset[k][0]) for k in range(2))
    assert grey_image.dtype == np.uint8 and grey_image.shape == (12, 10, 3)
    np.testing.assert_array_equal(grey_image, np.repeat((grey >> 8)[..., None], 3, axis=-1).astype(np.uint8))
    # The same scale as PIL's own reading of 16-bit colour.
    np.testing.assert_array_equal(colour_image, (colour >> 8).astype(np.uint8))


def test_image_errors_name_the_file(tmp_path):
    Image.new("RGB", (5000, 3), (10, 20, 30)).save(tmp_path / "strip.png")
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(tmp_path / "float.tiff")
    (tmp_path / "text.jpg").write_text("not an image")
    dataset = _dataset(tmp_path, {"strip.png": (5000, 3), "float.tiff": (8, 8), "text.jpg": (8, 8)},
                       transforms=build_transforms(_cfg(), is_train=False))
    with pytest.raises(ValueError) as strip:
        dataset[0]
    assert str(strip.value) == (
        f"Image {tmp_path / 'strip.png'} (image id 1) (5000x3 pixels): a 5000x3 image is too elongated: with its "
        "long side at most 250 pixels (INPUT.MAX_SIZE_*), its short side would be 0 pixels; crop the image or "
        "leave it out")
    with pytest.raises(ValueError, match=rf"^Image {tmp_path / 'float.tiff'} \(image id 2\): floating-point pixels"):
        dataset[1]
    with pytest.raises(OSError, match=rf"^Cannot read image {tmp_path / 'text.jpg'} \(image id 3\): cannot identify"):
        dataset[2]


@pytest.fixture(scope="module")
def upright_and_rotated(tmp_path_factory):
    """(upright pixels, PNG file storing them turned 90 degrees counter-clockwise with EXIF orientation 6)."""
    folder = tmp_path_factory.mktemp("exif")
    upright = np.random.default_rng(5).integers(0, 200, (90, 60, 3), dtype=np.uint8)
    upright[:20, :, 0] = 255  # a red band at the top, to see which way is up
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90_CLOCKWISE
    path = folder / "photo.png"
    Image.fromarray(np.rot90(upright, k=1).copy()).save(path, exif=exif)
    return upright, path


def test_datasets_keep_the_stored_pixels_of_exif_rotated_images(upright_and_rotated):
    upright, path = upright_and_rotated
    dataset = _dataset(path.parent, {path.name: (90, 60)})
    np.testing.assert_array_equal(np.asarray(dataset[0][0]), np.rot90(upright, k=1))


@pytest.fixture(scope="module")
def predictor(small_state_dict):
    torch.manual_seed(0)
    model = build_detection_model(_cfg())
    model.load_state_dict(small_state_dict)
    return GLIPPredictor(_cfg(), model=model)


def test_predictor_and_demo_apply_the_exif_orientation(upright_and_rotated, predictor, small_state_dict, tmp_path):
    upright, path = upright_and_rotated
    expected = predictor.predict(upright, ["person", "car"], threshold=0.0)
    with Image.open(path) as photo:
        got = predictor.predict(photo, ["person", "car"], threshold=0.0)
    assert got.size == expected.size == (60, 90)
    assert len(got) > 0
    torch.testing.assert_close(got.bbox, expected.bbox, rtol=0, atol=0)
    torch.testing.assert_close(got.get_field("scores"), expected.get_field("scores"), rtol=0, atol=0)

    weight = tmp_path / "small.pth"
    torch.save({"model": small_state_dict}, weight)
    demo = load_tool("tools/demo.py")
    out = tmp_path / "out.png"
    demo.main([str(path), "person. car", "--config-file", str(SMALL / "config.yaml"), "--weight", str(weight),
               "--out", str(out), *OPTS])
    with Image.open(out) as drawn:
        assert drawn.width * 90 == drawn.height * 60  # upright (possibly enlarged by a whole factor)
        top = np.asarray(drawn.convert("RGB"))[: drawn.height // 10]
    assert (top[..., 0] == 255).mean() > 0.9  # the red band is at the top


def test_demo_names_the_file_of_an_image_it_cannot_resize(tmp_path, small_state_dict):
    weight = tmp_path / "small.pth"
    torch.save({"model": small_state_dict}, weight)
    Image.new("RGB", (5000, 3)).save(tmp_path / "strip.png")
    demo = load_tool("tools/demo.py")
    with pytest.raises(ValueError, match=rf"^Image {tmp_path / 'strip.png'} \(5000x3 pixels\): a 5000x3 image is "
                                         r"too elongated"):
        demo.main([str(tmp_path / "strip.png"), "person", "--config-file", str(SMALL / "config.yaml"),
                   "--weight", str(weight), "--out", str(tmp_path / "out.png"), *OPTS])
