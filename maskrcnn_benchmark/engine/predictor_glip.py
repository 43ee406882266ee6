"""Inference API: detect the phrases of a text prompt in one image (the role of the official GLIPDemo)."""
import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from maskrcnn_benchmark.data.datasets.coco import to_rgb, transform_image
from maskrcnn_benchmark.data.datasets.od_to_grounding import join_names
from maskrcnn_benchmark.data.datasets.positive_maps import create_positive_dict
from maskrcnn_benchmark.data.transforms import build_transforms
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import to_image_list
from maskrcnn_benchmark.text import build_tokenizer, tokenize_captions
from maskrcnn_benchmark.utils.checkpoint import DetectronCheckpointer, missing_weights_error
from maskrcnn_benchmark.utils.device import resolve_device
from maskrcnn_benchmark.utils.drawing import draw_labelled_boxes, enlarge, enlargement_factor

from .inference import CharSpan, LabelToTokens, check_prompt_fits

logger = logging.getLogger(__name__)

# Between the names of a list prompt, as in the official demo (which also ends the caption with it).
NAME_SEPARATOR = " . "

ImageInput = Image.Image | np.ndarray


def build_caption(caption: str | Sequence[str]) -> tuple[str, list[str], list[list[CharSpan]]]:
    """The caption string, its phrases and each phrase's char spans.

    A list of names becomes "name1 . name2 . " (the official demo's list prompt), one phrase per name. A string
    is used as is; its phrases are its "."-separated parts (the official demo finds noun phrases with NLTK,
    which this project does not depend on; pass a list of names to choose the phrases).
    """
    if isinstance(caption, str):
        phrases, spans, start = [], [], 0
        for part in caption.split("."):
            stripped = part.strip()
            if stripped:
                begin = start + part.index(stripped)
                phrases.append(stripped)
                spans.append([(begin, begin + len(stripped))])
            start += len(part) + 1
        return caption, phrases, spans
    names = [str(name) for name in caption]
    text, spans = join_names(names, NAME_SEPARATOR)
    return text + NAME_SEPARATOR if names else text, names, [[span] for span in spans]


def _to_pil(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        # Users' photos: upright as viewers show them (EXIF orientation), 16-bit greyscale scaled to 8 bits.
        return to_rgb(ImageOps.exif_transpose(image), "given to the predictor")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
    return Image.fromarray(array, mode="RGB")


class PreparedInput(NamedTuple):
    """One image and prompt made ready for the model."""

    tensor: torch.Tensor  # the transformed image
    size: tuple[int, int]  # (width, height) of the input image, the boxes' final coordinates
    text: str
    names: list[str]
    label_to_tokens: LabelToTokens


class GLIPPredictor:
    """Runs a GLIP model on an RGB image and a prompt; boxes come back in the image's own pixel coordinates."""

    def __init__(self, cfg, model: nn.Module | None = None, weight: str | None = None):
        self.cfg = cfg.clone()
        self.device = resolve_device(cfg.MODEL.DEVICE)
        if model is None:
            weight = weight or cfg.MODEL.WEIGHT
            if not weight and not cfg.MODEL.ALLOW_MISSING_WEIGHTS:
                raise missing_weights_error("GLIPPredictor has no weights (no `weight` and MODEL.WEIGHT is empty)",
                                            "Pass weight=CHECKPOINT or set MODEL.WEIGHT (tools/demo.py: --weight "
                                            "CHECKPOINT)")
            model = build_detection_model(cfg)
            DetectronCheckpointer(cfg, model).load(weight, force=True)
        self.model = model.to(self.device)
        self.model.eval()
        self.transforms = build_transforms(cfg, is_train=False)
        self.tokenizer = build_tokenizer(cfg)
        self.size_divisibility = cfg.DATALOADER.SIZE_DIVISIBILITY
        self.max_query_len = cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN
        self.pad_max = cfg.MODEL.LANGUAGE_BACKBONE.PAD_MAX

    def prompt(self, caption: str | Sequence[str]) -> tuple[str, list[str], LabelToTokens]:
        """Caption string, phrase names (label i is names[i-1]) and the label -> token indices map."""
        text, names, spans = build_caption(caption)
        tokenized = self.tokenizer(text, return_tensors="pt")
        label_to_tokens = create_positive_dict(tokenized, spans, range(1, len(names) + 1))
        check_prompt_fits(label_to_tokens, self.max_query_len, text)
        return text, names, label_to_tokens

    @torch.no_grad()
    def predict(self, image: ImageInput, caption: str | Sequence[str], threshold: float = 0.5,
                source: str | None = None) -> BoxList:
        """Detections scoring above `threshold`, best first, with fields scores, labels and label_names (list).

        A PIL image is first turned as its EXIF orientation says; the boxes refer to the turned image. `source`
        (e.g. the file name) names the image in errors.
        """
        return self.predict_batch([image], [caption], threshold, None if source is None else [source])[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageInput], captions: Sequence[str | Sequence[str]],
                      threshold: float = 0.5, sources: Sequence[str] | None = None,
                      batch_size: int = 8) -> list[BoxList]:
        """`predict` for a list of images with one prompt each, up to `batch_size` images per forward pass.

        Images are batched with the others of the same padded size only: padding would enter the Swin windows,
        the image-text fusion and the DyHead's pooled attention, so a mixed batch would not give the detections
        each image gets alone. Within a batch every image is scored with its own prompt's label -> tokens map.
        """
        if len(captions) != len(images):
            raise ValueError(f"{len(images)} images but {len(captions)} prompts: pass one prompt per image.")
        if sources is not None and len(sources) != len(images):
            raise ValueError(f"{len(images)} images but {len(sources)} sources: pass one name per image.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if sources is None:
            sources = [f"image {k} given to the predictor" for k in range(len(images))]
        inputs = [self._prepare(image, caption, source) for image, caption, source in zip(images, captions, sources)]
        groups: dict = {}
        for index, item in enumerate(inputs):
            groups.setdefault(self._padded_size(item.tensor), []).append(index)
        results: list[BoxList | None] = [None] * len(inputs)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                for index, prediction in zip(chunk, self._forward([inputs[k] for k in chunk])):
                    results[index] = self._finish(prediction, inputs[index], threshold)
        return results

    def _prepare(self, image: ImageInput, caption: str | Sequence[str], source: str) -> "PreparedInput":
        pil_image = _to_pil(image)
        text, names, label_to_tokens = self.prompt(caption)
        if not label_to_tokens:
            raise ValueError(f"No phrase of the prompt {caption!r} maps to a token ({source}).")
        tensor = transform_image(self.transforms, pil_image, None, source)
        return PreparedInput(tensor, pil_image.size, text, names, label_to_tokens)

    def _padded_size(self, tensor: torch.Tensor) -> tuple[int, int]:
        divisor = max(self.size_divisibility, 1)
        return tuple(-(-side // divisor) * divisor for side in tensor.shape[1:])

    def _forward(self, inputs: Sequence["PreparedInput"]) -> list[BoxList]:
        images = to_image_list([item.tensor for item in inputs], self.size_divisibility).to(self.device)
        texts = [item.text for item in inputs]
        tokenized = tokenize_captions(self.tokenizer, texts, self.max_query_len, self.pad_max).to(self.device)
        # One label -> tokens map per image; a single image keeps the plain dict of the eval loop.
        maps = [item.label_to_tokens for item in inputs]
        return self.model(images, captions=texts, positive_map=maps[0] if len(maps) == 1 else maps,
                          tokenized=tokenized)

    @staticmethod
    def _finish(prediction: BoxList, item: "PreparedInput", threshold: float) -> BoxList:
        prediction = prediction.to("cpu").resize(item.size)
        prediction = prediction[prediction.get_field("scores") > threshold]
        prediction = prediction[prediction.get_field("scores").argsort(descending=True)]
        prediction.add_field("label_names",
                             [item.names[label - 1] for label in prediction.get_field("labels").tolist()])
        return prediction


def draw_predictions(image: ImageInput, prediction: BoxList, color: tuple[int, int, int] = (255, 0, 0),
                     width: int = 2, min_side: int = 0) -> Image.Image:
    """A copy of the image with each box and its "name:score" label (contrasting text on a filled box) drawn.

    With `min_side`, the copy is first enlarged by the smallest whole factor that makes its short side at least
    that many pixels (the boxes with it), so that labels on small images can be read.
    """
    canvas = _to_pil(image)
    factor = enlargement_factor(canvas.size, min_side) if min_side > 0 else 1
    canvas = enlarge(canvas, factor, Image.BICUBIC)
    names = prediction.get_field("label_names") if prediction.has_field("label_names") else None
    boxes = [[value * factor for value in box] for box in prediction.convert("xyxy").bbox.tolist()]
    scores = prediction.get_field("scores").tolist()
    labels = [f"{names[k] if names is not None else 'object'}:{score:.2f}" for k, score in enumerate(scores)]
    draw_labelled_boxes(canvas, boxes, labels, color, width)
    return canvas
