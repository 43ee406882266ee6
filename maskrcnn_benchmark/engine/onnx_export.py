"""ONNX export of the GLIP inference graph and a runner that gives the same detections as GLIPPredictor.

The graph takes one image (1, 3, H, W) at the exported size and one caption tokenised to MAX_QUERY_LEN
(input_ids, attention_mask) and returns, per FPN level, the head's raw outputs: box regression (1, 4A, h, w),
centerness logits (1, A, h, w) and dot-product token logits (1, h*w*A, MAX_QUERY_LEN). Everything that depends on
the data (scores of the prompt's phrases, threshold, top-k, box decoding, NMS) stays outside the graph: the
runner applies the PyTorch model's own ATSS post-processor to the session's outputs.
"""
import dataclasses
import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from maskrcnn_benchmark.data.transforms import build_transforms
from maskrcnn_benchmark.layers.execution_plan import REFERENCE_PLAN, ExecutionPlan, apply_execution_plan
from maskrcnn_benchmark.modeling.rpn.anchor_generator import make_anchor_generator_complex
from maskrcnn_benchmark.modeling.rpn.inference import make_atss_postprocessor
from maskrcnn_benchmark.modeling.rpn.rpn import make_box_coder
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList
from maskrcnn_benchmark.text import build_tokenizer, tokenize_captions

from .predictor_glip import GLIPPredictor, PreparedInput

logger = logging.getLogger(__name__)

# DeformConv entered the ONNX standard in opset 19; onnxruntime runs it on the CPU.
DEFAULT_OPSET = 19
INPUT_NAMES = ("image", "input_ids", "attention_mask")
OUTPUT_KINDS = ("box_regression", "centerness", "token_logits")
INSTALL_HINT = 'pip install -e ".[export]" (onnx, onnxscript, onnxruntime)'


def output_names(num_levels: int) -> list[str]:
    """Graph output names: box_regression_0.., centerness_0.., token_logits_0.. (one per FPN level)."""
    return [f"{kind}_{level}" for kind in OUTPUT_KINDS for level in range(num_levels)]


class GLIPInferenceGraph(nn.Module):
    """The traceable part of GLIP inference: language model, backbone and head, with no data-dependent shape."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.mask_special:
            raise ValueError("MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL is True: the exported graph takes no "
                             "special_tokens_mask input; export a model configured with MASK_SPECIAL False.")
        self.model = model

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-level box regression, centerness logits and token logits (see the module docstring)."""
        language = self.model.encode_language({"input_ids": input_ids, "attention_mask": attention_mask})
        rpn = self.model.rpn
        if hasattr(rpn, "tunable_linear"):
            language = rpn._add_prompt_offsets(language)
        outputs = rpn.head(self.model.backbone(image), language)
        return (*outputs.box_regression, *outputs.centerness, *outputs.dot_product_logits)


def export_plan() -> ExecutionPlan:
    """The plan traced for export: the reference computation (text kept at MAX_QUERY_LEN, torchvision's
    deformable conv, which exports as ONNX DeformConv, no compiled kernel)."""
    return dataclasses.replace(REFERENCE_PLAN, name="export")


def trace_inference_graph(model: nn.Module, image_size: tuple[int, int]) -> torch.export.ExportedProgram:
    """torch.export program of GLIPInferenceGraph for (height, width) images; the model's plan is restored."""
    height, width = image_size
    divisor = max(model.cfg.DATALOADER.SIZE_DIVISIBILITY, 1)
    if height % divisor or width % divisor:
        raise ValueError(f"Export size {height}x{width} is not a multiple of DATALOADER.SIZE_DIVISIBILITY "
                         f"({divisor}); padded images always are.")
    tokens = tokenize_captions(model.tokenizer, ["object"], model.max_query_len, pad_max=True)
    device = next(model.parameters()).device
    example = (torch.zeros(1, 3, height, width, device=device), tokens["input_ids"].to(device),
               tokens["attention_mask"].to(device))
    previous_plan, was_training = model.execution_plan, model.training
    model.eval()
    apply_execution_plan(model, export_plan())
    try:
        with torch.no_grad():
            return torch.export.export(GLIPInferenceGraph(model), example, strict=False)
    finally:
        apply_execution_plan(model, previous_plan)
        model.train(was_training)


def export_onnx(model: nn.Module, path: str, image_size: tuple[int, int], opset: int = DEFAULT_OPSET,
                program_path: str | None = None) -> str:
    """Write the ONNX file of the model's inference graph for (height, width) images (and, with
    `program_path`, the torch.export program as a .pt2 file); return `path`."""
    program = trace_inference_graph(model, image_size)
    num_levels = len(program.graph_signature.user_outputs) // len(OUTPUT_KINDS)
    if program_path:
        torch.export.save(program, program_path)
        logger.info("Wrote the torch.export program %s", program_path)
    try:
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, optimize=False, verbose=False,
                                         input_names=list(INPUT_NAMES),
                                         output_names=output_names(num_levels))
    except ImportError as err:
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages ({err}): {INSTALL_HINT}") from err
    onnx_program.save(path)
    logger.info("Wrote %s (opset %d, image %dx%d, caption of %d tokens)", path, opset, *image_size,
                model.max_query_len)
    return path


class ONNXRunner(GLIPPredictor):
    """GLIPPredictor's API (predict, predict_batch) on an exported ONNX file run by onnxruntime.

    Images are transformed as for the PyTorch model and zero-padded at the bottom and right to the exported
    size; captions are padded to MAX_QUERY_LEN. The session's outputs go through the same ATSS post-processing
    (phrase scores, threshold, top-k, decoding, class-aware NMS) as the PyTorch model.
    """

    def __init__(self, cfg, onnx_path: str, providers: Sequence[str] = ("CPUExecutionProvider",)):
        try:
            import onnxruntime
        except ImportError as err:
            raise ImportError(f"ONNXRunner needs onnxruntime: {INSTALL_HINT}") from err
        if not os.path.isfile(onnx_path):
            raise FileNotFoundError(f"ONNX file not found: {onnx_path} (write it with tools/export_onnx.py).")
        self.cfg = cfg.clone()
        self.device = torch.device("cpu")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: the graph's constant-folding notes are not the user's concern
        self.session = onnxruntime.InferenceSession(onnx_path, options, providers=list(providers))
        image_input = self.session.get_inputs()[0]
        self.image_size = tuple(image_input.shape[2:])
        text_length = self.session.get_inputs()[1].shape[1]
        self.max_query_len = cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN
        if text_length != self.max_query_len:
            raise ValueError(f"{onnx_path} takes captions of {text_length} tokens but the config's "
                             f"MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN is {self.max_query_len}: use the export's config.")
        self.pad_max = True
        self.transforms = build_transforms(cfg, is_train=False)
        self.tokenizer = build_tokenizer(cfg)
        self.size_divisibility = cfg.DATALOADER.SIZE_DIVISIBILITY
        self.anchor_generator = make_anchor_generator_complex(cfg)
        self.box_selector = make_atss_postprocessor(cfg, make_box_coder(), is_train=False)

    def _forward(self, inputs: Sequence[PreparedInput]) -> list[BoxList]:
        return [self._run_one(item) for item in inputs]

    def _run_one(self, item: PreparedInput) -> BoxList:
        """Session run on one padded image and caption, then the ATSS post-processing."""
        height, width = item.tensor.shape[1:]
        if height > self.image_size[0] or width > self.image_size[1]:
            raise ValueError(f"The transformed image is {height}x{width} pixels, larger than the exported "
                             f"{self.image_size[0]}x{self.image_size[1]}: export for a larger size.")
        padded = item.tensor.new_zeros(1, 3, *self.image_size)
        padded[0, :, :height, :width] = item.tensor
        tokens = tokenize_captions(self.tokenizer, [item.text], self.max_query_len, pad_max=True)
        feeds = {"image": padded.numpy(), "input_ids": tokens["input_ids"].numpy(),
                 "attention_mask": tokens["attention_mask"].numpy()}
        outputs = [torch.from_numpy(value) for value in self.session.run(None, feeds)]
        num_levels = len(outputs) // len(OUTPUT_KINDS)
        box_regression, centerness, token_logits = (outputs[k * num_levels:(k + 1) * num_levels]
                                                    for k in range(len(OUTPUT_KINDS)))
        images = ImageList(padded, [(height, width)])
        anchors = self.anchor_generator(images, box_regression)
        return self.box_selector(box_regression, centerness, anchors, token_logits, item.label_to_tokens)[0]
