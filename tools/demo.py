"""Detect the phrases of a prompt in images and save each image with the labelled boxes drawn, plus a JSON.

One image (as before):

    python tools/demo.py IMAGE "person. dog. bicycle" --config-file CONFIG --weight CHECKPOINT --out out.png

A folder of images (and/or more files with --add-image), batched through the model with a progress bar:

    python tools/demo.py FOLDER "person. dog" --config-file CONFIG --weight CHECKPOINT --out-dir demo_out

writes DIR/<image name>_glip.png for each image and DIR/detections.json (for one image: --out and the JSON next
to it, out.json). The JSON lists every detection: image, label, phrase, score and box (x1, y1, x2, y2 in the
input image's pixels, upright as its EXIF orientation says). The picture is enlarged (by a whole factor) until its
short side is at least --min-size pixels (512), so that the labels can be read.
"""
import argparse
import json
import logging
import os
from collections.abc import Sequence

from tqdm import tqdm

from maskrcnn_benchmark.config import load_config
from maskrcnn_benchmark.data.datasets.coco import read_rgb_image
from maskrcnn_benchmark.engine.predictor_glip import GLIPPredictor, draw_predictions
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.drawing import READABLE_MIN_SIDE

# File name endings read from a folder (case-insensitive); other files there are listed in the log, not read.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PICTURE_SUFFIX = "_glip.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Image(s), prompt, model and output flags; trailing KEY VALUE pairs override the config."""
    parser = argparse.ArgumentParser(description="GLIP demo: grounded detection on images")
    parser.add_argument("image", help="input image file, or a folder of images")
    parser.add_argument("prompt", help='caption; its "."-separated parts are the phrases to detect')
    # One file per flag (repeat it): a list flag would also take the trailing KEY VALUE pairs.
    parser.add_argument("--add-image", action="append", default=[], metavar="FILE",
                        help="one more image file to run on (repeat the flag for more)")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--weight", default=None, metavar="FILE", help="checkpoint (else MODEL.WEIGHT)")
    parser.add_argument("--out", default="demo.png", help="output PNG file of a single input image")
    parser.add_argument("--out-dir", default="demo_out", help="output folder for a folder or several images")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="detections JSON (default: --out with .json, or OUT_DIR/detections.json)")
    parser.add_argument("--threshold", type=float, default=0.5, help="keep detections scoring above this")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--min-size", type=int, default=READABLE_MIN_SIDE,
                        help="enlarge the picture by a whole factor until its short side is at least this")
    parser.add_argument("opts", help="Modify config options using the command-line (KEY VALUE pairs)",
                        nargs="*")
    # Intermixed: the flags may follow the image and prompt, and the KEY VALUE pairs may follow the flags.
    return parser.parse_intermixed_args(argv)


def list_images(first: str, more: Sequence[str]) -> list[str]:
    """The input image files: `first` (a file, or a folder's image files sorted by name), then `more`."""
    if os.path.isdir(first):
        names = sorted(os.listdir(first))
        files = [os.path.join(first, name) for name in names if os.path.isfile(os.path.join(first, name))]
        images = [path for path in files if path.lower().endswith(IMAGE_EXTENSIONS)]
        others = sorted(set(files) - set(images))
        if others:
            logging.info("Not images by their extension (%s), not read: %s", ", ".join(IMAGE_EXTENSIONS), others)
        if not images:
            raise FileNotFoundError(f"The folder {first} holds no image file (names ending in "
                                    f"{', '.join(IMAGE_EXTENSIONS)}).")
    elif os.path.isfile(first):
        images = [first]
    else:
        raise FileNotFoundError(f"Input not found: {first} (expected an image file or a folder of images).")
    for path in more:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file not found: {path} (given with --add-image).")
    return images + list(more)


def output_pictures(images: Sequence[str], out: str, out_dir: str) -> list[str]:
    """The picture file of each input: `out` for a single image, else OUT_DIR/<name>_glip.png."""
    if len(images) == 1:
        pictures = [out]
    else:
        pictures = [os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + PICTURE_SUFFIX)
                    for path in images]
    seen = {}
    inputs = {os.path.realpath(path) for path in images}
    for image, picture in zip(images, pictures):
        if picture in seen:
            raise ValueError(f"{image} and {seen[picture]} would both be drawn to {picture}: their names differ only "
                             "in the folder or extension; run them separately.")
        if os.path.realpath(picture) in inputs:
            raise ValueError(f"The picture of {image} would overwrite the input image {picture}: choose another "
                             "--out / --out-dir.")
        seen[picture] = image
    return pictures


def detection_records(image: str, prediction: BoxList) -> list[dict]:
    """One JSON record per detection: image, label, phrase, score and box (xyxy, input image pixels)."""
    return [{"image": image, "label": label, "phrase": phrase, "score": score, "box": box}
            for label, phrase, score, box in zip(prediction.get_field("labels").tolist(),
                                                 prediction.get_field("label_names"),
                                                 prediction.get_field("scores").tolist(),
                                                 prediction.convert("xyxy").bbox.tolist())]


def run(predictor: GLIPPredictor, args: argparse.Namespace, images: Sequence[str], pictures: Sequence[str]) -> dict:
    """Predict, draw and save batch by batch; the JSON document of all detections."""
    document = {"prompt": args.prompt, "threshold": args.threshold, "images": [], "detections": []}
    with tqdm(total=len(images), unit="image", desc="GLIP demo") as progress:
        for start in range(0, len(images), args.batch_size):
            paths = images[start:start + args.batch_size]
            # Upright as photo viewers show them (EXIF orientation); the boxes refer to those images.
            loaded = [read_rgb_image(path, exif_orientation=True) for path in paths]
            predictions = predictor.predict_batch(loaded, [args.prompt] * len(paths), threshold=args.threshold,
                                                  sources=paths, batch_size=args.batch_size)
            for path, picture, image, prediction in zip(paths, pictures[start:], loaded, predictions):
                # Drawn on an enlarged copy: labels on a small input would be unreadable.
                draw_predictions(image, prediction, min_side=args.min_size).save(picture, format="PNG")
                document["images"].append({"image": path, "width": image.width, "height": image.height,
                                           "picture": picture, "detections": len(prediction)})
                document["detections"] += detection_records(path, prediction)
            progress.update(len(paths))
    return document


def main(argv: list[str] | None = None) -> None:
    """Run the predictor on the images and write the drawn pictures and the detections JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1, got {args.batch_size}")
    images = list_images(args.image, args.add_image)
    pictures = output_pictures(images, args.out, args.out_dir)
    json_file = args.json or (os.path.splitext(args.out)[0] + ".json" if len(images) == 1
                              else os.path.join(args.out_dir, "detections.json"))
    cfg = load_config(args.config_file, args.opts or [])
    predictor = GLIPPredictor(cfg, weight=args.weight)
    for folder in {os.path.dirname(path) for path in [*pictures, json_file]} - {""}:
        os.makedirs(folder, exist_ok=True)
    document = run(predictor, args, images, pictures)
    for record in document["detections"]:
        logging.info("%s %s %.3f %s", record["image"], record["phrase"], record["score"],
                     [round(v, 1) for v in record["box"]])
    with open(json_file, "w") as f:
        json.dump(document, f, indent=1)
    logging.info("Wrote %d pictures and %s (%d detections)", len(pictures), json_file, len(document["detections"]))


if __name__ == "__main__":
    main()
