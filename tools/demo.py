"""Detect the phrases of a prompt in an image and save the image with the labelled boxes drawn.

The picture is enlarged (by a whole factor) until its short side is at least --min-size pixels (512), so that the
labels can be read; the boxes printed in the log stay in the input image's pixels.

    python tools/demo.py IMAGE "person. dog. bicycle" --config-file CONFIG --weight CHECKPOINT --out out.png
"""
import argparse
import logging
from typing import List, Optional

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.data.datasets.coco import read_rgb_image
from maskrcnn_benchmark.engine.predictor_glip import GLIPPredictor, draw_predictions
from maskrcnn_benchmark.utils.drawing import READABLE_MIN_SIDE


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Image, prompt, model and output flags; trailing KEY VALUE pairs override the config."""
    parser = argparse.ArgumentParser(description="GLIP demo: grounded detection on one image")
    parser.add_argument("image", help="input image file")
    parser.add_argument("prompt", help='caption; its "."-separated parts are the phrases to detect')
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--weight", default=None, metavar="FILE", help="checkpoint (else MODEL.WEIGHT)")
    parser.add_argument("--out", default="demo.png", help="output PNG file")
    parser.add_argument("--threshold", type=float, default=0.5, help="keep detections scoring above this")
    parser.add_argument("--min-size", type=int, default=READABLE_MIN_SIDE,
                        help="enlarge the picture by a whole factor until its short side is at least this")
    parser.add_argument("opts", help="Modify config options using the command-line (KEY VALUE pairs)",
                        nargs="*")
    # Intermixed: the flags may follow the image and prompt, and the KEY VALUE pairs may follow the flags.
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    """Run the predictor on the image and write the drawn result."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = default_cfg.clone()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    predictor = GLIPPredictor(cfg, weight=args.weight)
    # Upright as photo viewers show it (EXIF orientation); the boxes refer to that image.
    image = read_rgb_image(args.image, exif_orientation=True)
    prediction = predictor.predict(image, args.prompt, threshold=args.threshold, source=args.image)
    for name, score, box in zip(prediction.get_field("label_names"), prediction.get_field("scores").tolist(),
                                prediction.bbox.tolist()):
        logging.info("%s %.3f %s", name, score, [round(v, 1) for v in box])
    # Drawn on an enlarged copy: labels on a small input (e.g. a 128x128 synthetic image) would be unreadable.
    canvas = draw_predictions(image, prediction, min_side=args.min_size)
    canvas.save(args.out, format="PNG")
    logging.info("Wrote %s (%d boxes, %dx%d pixels)", args.out, len(prediction), canvas.width, canvas.height)


if __name__ == "__main__":
    main()
