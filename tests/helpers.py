"""Helpers that several test modules share (tests import helpers, never each other's private functions).

Processes: a free rendezvous port and environments whose `python` is this interpreter. Tools: tools/*.py loaded as
modules. The small golden model: its config, inputs, head and synthetic loss inputs. Toy training loaders. End to
end: a tiny COCO
folder, the small model's weights and the one reference training run that the resume, AMP and DDP tests share.
"""
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from conftest import SMALL, small_raw_cfg
from PIL import Image
from torch.utils.data import DataLoader
from transformers import BertConfig

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.data import CollatedBatch
from maskrcnn_benchmark.data.build import make_batch_data_sampler, make_data_sampler
from maskrcnn_benchmark.modeling.rpn.anchor_generator import make_anchor_generator_complex
from maskrcnn_benchmark.modeling.rpn.vldyhead import VLDyHead, build_vldyhead
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList, to_image_list
from maskrcnn_benchmark.utils.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nobody listens on now (never torchrun's fixed 29500, which parallel runs would share)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def python_first_env(**extra: str) -> dict:
    """os.environ with this interpreter's folder first on PATH: scripts calling `python`/`python3` get it too."""
    env = dict(os.environ, **extra)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def subprocess_env(**extra: str) -> dict:
    """Environment of the tools and launch scripts run by tests: this interpreter, the checkout importable."""
    env = python_first_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def load_tool(relative_path: str) -> ModuleType:
    """A script of the checkout (e.g. "tools/train_net.py") imported as a module, to call its functions."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------
# The small golden model (tests/fixtures/small)
# ----------------------------------------------------------------------------------------------------------------
def small_cfg():
    """The small golden config merged into the project's defaults, with its BERT config folder."""
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(SMALL / "config.yaml"))
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_PATH = str(SMALL / "bert")
    cfg.MODEL.DYHEAD.FUSE_CONFIG.ATTN_DROPOUT = 0.0  # the fixture was made with the fusion dropout set to 0
    cfg.freeze()
    return cfg


def small_predictor_cfg(options: list):
    """The small golden config with `options` (KEY VALUE ...) merged, frozen: the predictor, demo and export tests'."""
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(SMALL / "config.yaml"))
    cfg.merge_from_list(options)
    cfg.freeze()
    return cfg


def image_list(case: dict) -> ImageList:
    """The golden case's padded image batch."""
    inputs = case["inputs"]
    return ImageList(inputs["image_list_tensors"].clone(), [tuple(s) for s in inputs["image_sizes_hw"]])


def eval_forward(model: torch.nn.Module, case: dict) -> list:
    """The model's detections on the golden case's images and evaluation prompt."""
    model.eval()
    given = case["inputs"]["eval"]
    with torch.no_grad():
        return model(image_list(case), captions=given["captions"],
                     positive_map=given["positive_map_label_to_token"])


def train_targets(case: dict) -> list[BoxList]:
    """The golden case's training targets as BoxLists."""
    targets = []
    for t in case["inputs"]["train"]["targets"]:
        box = BoxList(t["boxes_xyxy"].clone(), tuple(t["image_size_wh"]), mode="xyxy")
        box.add_field("labels", t["labels"].clone())
        targets.append(box)
    return targets


def assert_same_detections(got: BoxList, expected: dict) -> None:
    """Same scores (sorted) and, for every expected detection, a predicted one with its label and box."""
    assert len(got) == len(expected["scores"])
    order_got = torch.argsort(got.get_field("scores"), descending=True)
    order_exp = torch.argsort(expected["scores"], descending=True)
    torch.testing.assert_close(got.get_field("scores")[order_got], expected["scores"][order_exp],
                               atol=1e-3, rtol=0)
    boxes, labels = got.bbox, got.get_field("labels")
    for box, label in zip(expected["boxes_xyxy"], expected["labels"]):
        same = (labels == label) & ((boxes - box).abs().max(dim=1).values < 1e-3)
        assert same.any(), f"no detection for label {int(label)} box {box.tolist()}"


HEAD_PREFIX = "rpn.head."


def head_cfg(attn_dropout: float = 0.1, use_checkpoint: bool = False):
    """The small golden config plus the fusion-attention keys this port adds."""
    cfg = small_raw_cfg()
    fuse = cfg.MODEL.DYHEAD.FUSE_CONFIG
    fuse.ATTN_DROPOUT = attn_dropout
    fuse.ATTN_EMBED_DIM = 2048
    fuse.ATTN_NUM_HEADS = 8
    cfg.MODEL.DYHEAD.USE_CHECKPOINT = use_checkpoint
    return cfg


def small_head(state_dict: dict, **cfg_kwargs) -> VLDyHead:
    """Build the small head and load the golden weights strictly."""
    head = build_vldyhead(head_cfg(**cfg_kwargs), BertConfig.from_pretrained(SMALL / "bert"))
    head_state = {k[len(HEAD_PREFIX):]: v for k, v in state_dict.items() if k.startswith(HEAD_PREFIX)}
    head.load_state_dict(head_state, strict=True)
    return head


def head_inputs(case: dict) -> tuple[list[torch.Tensor], dict]:
    """The golden case's FPN outputs and language features, the head's inputs."""
    intermediates = case["eval"]["intermediates"]
    return list(intermediates["fpn_outputs"]), dict(intermediates["language_backbone"])


# ----------------------------------------------------------------------------------------------------------------
# Synthetic ATSS inputs
# ----------------------------------------------------------------------------------------------------------------
LOSS_NUM_TOKENS = 12


def synthetic_anchors(cfg, image_sizes_hw, padded_hw=(320, 352)):
    """Anchors of a padded batch, with the feature map sizes an FPN would give."""
    strides = cfg.MODEL.RPN.ANCHOR_STRIDE
    feature_maps = [
        torch.zeros(len(image_sizes_hw), 1, math.ceil(padded_hw[0] / s), math.ceil(padded_hw[1] / s)) for s in strides
    ]
    images = ImageList(torch.zeros(len(image_sizes_hw), 3, *padded_hw), image_sizes_hw)
    return make_anchor_generator_complex(cfg)(images, feature_maps), feature_maps


def random_targets(generator: torch.Generator, num_boxes: int, image_hw, labels=None) -> BoxList:
    """`num_boxes` random boxes of at least 8 pixels inside an image of `image_hw`, labelled 1.. unless given."""
    height, width = image_hw
    x1 = torch.rand(num_boxes, generator=generator) * (width - 40)
    y1 = torch.rand(num_boxes, generator=generator) * (height - 40)
    box_w = 8 + torch.rand(num_boxes, generator=generator) * (width - x1 - 9)
    box_h = 8 + torch.rand(num_boxes, generator=generator) * (height - y1 - 9)
    boxes = torch.stack((x1, y1, x1 + box_w, y1 + box_h), dim=1)
    targets = BoxList(boxes, (width, height), mode="xyxy")
    targets.add_field("labels", torch.arange(1, num_boxes + 1) if labels is None else labels)
    return targets


def loss_inputs(cfg, boxes_per_image, seed=0, requires_grad=True):
    """Random head outputs, targets, (boxes, T) positive map and (N, T) text mask for a synthetic batch."""
    generator = torch.Generator().manual_seed(seed)
    image_sizes = [(300, 340), (260, 310)][: len(boxes_per_image)]
    anchors, feature_maps = synthetic_anchors(cfg, image_sizes)
    num_images = len(image_sizes)
    box_regression = [torch.randn(num_images, 4, *f.shape[-2:], generator=generator) for f in feature_maps]
    centerness = [torch.randn(num_images, 1, *f.shape[-2:], generator=generator) for f in feature_maps]
    dot_product_logits = [
        torch.randn(num_images, f.shape[-2] * f.shape[-1], LOSS_NUM_TOKENS, generator=generator) * 3
        for f in feature_maps
    ]
    for tensor in box_regression + centerness + dot_product_logits:
        tensor.requires_grad_(requires_grad)
    targets = [random_targets(generator, n, hw) for n, hw in zip(boxes_per_image, image_sizes)]
    rows = []
    for n in boxes_per_image:
        for box in range(n):
            row = torch.zeros(LOSS_NUM_TOKENS)
            row[1 + box: 3 + box] = 1
            rows.append(row)
    positive_map = torch.stack(rows) if rows else torch.zeros(0, LOSS_NUM_TOKENS)
    text_masks = torch.zeros(num_images, LOSS_NUM_TOKENS, dtype=torch.long)
    text_masks[:, :9] = 1
    return box_regression, centerness, dot_product_logits, targets, anchors, positive_map, text_masks


# ----------------------------------------------------------------------------------------------------------------
# The training loop on toy models: datasets of (image, BoxList, index)
# ----------------------------------------------------------------------------------------------------------------

def collate_toy_batch(samples) -> CollatedBatch:
    """(image, target, index) samples as the trainer's CollatedBatch, without captions or maps."""
    images, targets, ids = zip(*samples)
    return CollatedBatch(to_image_list(list(images)), targets, ids, None, None, None, None, None)


def toy_training_loader(dataset, images_per_batch: int, num_iterations: int, shuffle: bool = True) -> DataLoader:
    """A one-process training loader with make_data_loader's samplers (iteration-based, resumable)."""
    sampler = make_data_sampler(dataset, shuffle=shuffle, distributed=False)
    batch_sampler = make_batch_data_sampler(dataset, sampler, [], images_per_batch, num_iterations, drop_last=True)
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_toy_batch)


# ----------------------------------------------------------------------------------------------------------------
# End to end: tools/train_net.py on the small golden model with a tiny COCO folder
# ----------------------------------------------------------------------------------------------------------------
CATEGORIES = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]


def write_tiny_coco(root: Path, num_images: int, size: int = 96, seed: int = 0) -> Path:
    """A COCO-format folder (coco/{train2017,val2017,annotations}) of random images with 2 boxes each."""
    rng = np.random.default_rng(seed)
    for folder in ("train2017", "val2017", "annotations"):
        (root / "coco" / folder).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        name = f"{index + 1:012d}.jpg"
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        for split in ("train2017", "val2017"):
            Image.fromarray(pixels).save(root / "coco" / split / name, quality=95)
        images.append({"id": index + 1, "file_name": name, "width": size, "height": size})
        for box in range(2):
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            w, h = (int(v) for v in rng.integers(8, size // 2, 2))
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "iscrowd": 0,
                                "category_id": CATEGORIES[(index + box) % 3]["id"], "area": float(w * h),
                                "bbox": [float(x), float(y), float(w), float(h)]})
    for split in ("train2017", "val2017"):
        with open(root / "coco" / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return root


def write_small_weights(path: Path) -> Path:
    """The small golden model's weights as a checkpoint file (MODEL.WEIGHT)."""
    from make_fixtures import load_small_state_dict  # tests/fixtures, put on sys.path by conftest

    torch.save({"model": load_small_state_dict()}, path)
    return path


def small_train_options(weights: Path, max_iter: int = 5) -> list:
    """Config overrides of the end-to-end runs: small model, 96x96 images, 2 images per global batch.

    96 pixels keep the P6 map at 2x2: CPU bfloat16 convolution backward (oneDNN) intermittently returns
    non-finite weight gradients for the stride-2 P7 conv on a 1x1 map (images under 65 pixels).
    """
    return [
        "MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.WEIGHT", str(weights),
        "MODEL.DEVICE", "cpu", "MODEL.DYHEAD.FUSE_CONFIG.ATTN_DROPOUT", "0.0",
        "DATASETS.TRAIN", '("coco_grounding_train",)', "DATASETS.TEST", '("coco_2017_val",)',
        "DATASETS.DISABLE_SHUFFLE", "True", "AUGMENT.MULT_MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "AUGMENT.FLIP_PROB_TRAIN", "0.0", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.ASPECT_RATIO_GROUPING", "False",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_EPOCH", "0", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.BASE_LR", "0.0001", "SOLVER.LANG_LR", "0.0001", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.LOG_PERIOD", "1", "SOLVER.MODEL_EMA", "0.9",
    ]


def train_net_command(output_dir: Path, options: list, *flags: str) -> list:
    """tools/train_net.py on the small golden config, writing to `output_dir`."""
    return [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(SMALL / "config.yaml"),
            "--override_output_dir", str(output_dir), *flags, *options]


_REFERENCE: dict = {}


def reference_run(tmp_path_factory) -> dict:
    """One uninterrupted fp32 run of 5 iterations on 2 images (shared by the resume, AMP and DDP tests)."""
    if not _REFERENCE:
        root = tmp_path_factory.mktemp("small_training")
        data = write_tiny_coco(root / "data", num_images=2)
        weights = write_small_weights(root / "small.pth")
        output = root / "reference"
        subprocess.run(train_net_command(output, small_train_options(weights)), cwd=ROOT, check=True,
                       env=subprocess_env(DATASET=str(data)), capture_output=True)
        _REFERENCE.update(root=root, data=data, weights=weights, output=output,
                          final=read_checkpoint(str(output / "model_final.pth")))
    return _REFERENCE
