"""Export GLIP's inference graph to ONNX (and, with --program, the torch.export program) and check it.

    python tools/export_onnx.py --config-file CONFIG --weight CHECKPOINT --out glip.onnx --size 800 1344

The graph takes a (1, 3, HEIGHT, WIDTH) image and a caption tokenised to MAX_QUERY_LEN (input_ids,
attention_mask) and returns the per-level box regression, centerness and token logits; phrase scores, top-k and
NMS run outside it, in maskrcnn_benchmark.engine.onnx_export.ONNXRunner. With --check IMAGE PROMPT, the export is
run by onnxruntime on the image and its detections are compared with the PyTorch model's.
"""
import argparse
import logging

from maskrcnn_benchmark.config import load_config
from maskrcnn_benchmark.data.datasets.coco import read_rgb_image
from maskrcnn_benchmark.engine.onnx_export import DEFAULT_OPSET, ONNXRunner, export_onnx
from maskrcnn_benchmark.engine.predictor_glip import GLIPPredictor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Model, size, output and check flags; trailing KEY VALUE pairs override the config."""
    parser = argparse.ArgumentParser(description="Export GLIP's inference graph to ONNX")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--weight", default=None, metavar="FILE", help="checkpoint (else MODEL.WEIGHT)")
    parser.add_argument("--out", default="glip.onnx", help="output ONNX file (weights in OUT.data beside it)")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1344), metavar=("HEIGHT", "WIDTH"),
                        help="fixed input size, multiples of DATALOADER.SIZE_DIVISIBILITY; smaller images are "
                             "zero-padded to it")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (DeformConv needs 19+)")
    parser.add_argument("--program", default=None, metavar="FILE", help="also save the torch.export program (.pt2)")
    parser.add_argument("--check", nargs=2, default=None, metavar=("IMAGE", "PROMPT"),
                        help="compare onnxruntime's detections on IMAGE with the PyTorch model's")
    parser.add_argument("--threshold", type=float, default=0.5, help="score threshold of --check")
    parser.add_argument("opts", help="Modify config options using the command-line (KEY VALUE pairs)",
                        nargs="*")
    return parser.parse_intermixed_args(argv)


def check(predictor: GLIPPredictor, runner: ONNXRunner, image_file: str, prompt: str, threshold: float) -> float:
    """Largest score or box difference between PyTorch and onnxruntime on one image (the detections printed)."""
    image = read_rgb_image(image_file, exif_orientation=True)
    expected = predictor.predict(image, prompt, threshold=threshold, source=image_file)
    got = runner.predict(image, prompt, threshold=threshold, source=image_file)
    for name, score, box in zip(got.get_field("label_names"), got.get_field("scores").tolist(), got.bbox.tolist()):
        print(f"{name} {score:.3f} {[round(v, 1) for v in box]}")
    if len(got) != len(expected) or got.get_field("label_names") != expected.get_field("label_names"):
        raise SystemExit(f"onnxruntime found {len(got)} detections on {image_file}, PyTorch {len(expected)}: "
                         "the export does not match the model.")
    if not len(got):
        return 0.0
    return max(float((got.get_field("scores") - expected.get_field("scores")).abs().max()),
               float((got.bbox - expected.bbox).abs().max()))


def main(argv: list[str] | None = None) -> None:
    """Export, then optionally check against PyTorch."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = load_config(args.config_file, args.opts or [])
    predictor = GLIPPredictor(cfg, weight=args.weight)
    export_onnx(predictor.model, args.out, tuple(args.size), args.opset, program_path=args.program)
    if args.check:
        difference = check(predictor, ONNXRunner(cfg, args.out), *args.check, args.threshold)
        print(f"largest difference between onnxruntime and PyTorch (scores, boxes in pixels): {difference:.2e}")


if __name__ == "__main__":
    main()
