"""Detection evaluation of a grounding model: the class names become a text prompt whose tokens score the boxes."""
import datetime
import logging
import os
import time
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from maskrcnn_benchmark.config.compat import check_supported
from maskrcnn_benchmark.data.build import load_list_option
from maskrcnn_benchmark.data.datasets.flickr import FlickrDataset
from maskrcnn_benchmark.data.datasets.lvis import LvisDetection
from maskrcnn_benchmark.data.datasets.od_to_grounding import check_caption_prompt_length, clean_name, join_names
from maskrcnn_benchmark.data.datasets.positive_maps import create_positive_dict
from maskrcnn_benchmark.data.evaluation import evaluate
from maskrcnn_benchmark.data.evaluation.coco_eval import require_box_annotations
from maskrcnn_benchmark.data.evaluation.flickr_eval import FlickrGroundTruth, evaluate_flickr_recall, write_flickr_csv
from maskrcnn_benchmark.data.evaluation.lvis_eval import do_lvis_evaluation
from maskrcnn_benchmark.layers.deform_conv import NonFiniteOffsetError
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.boxlist_ops import cat_boxlist
from maskrcnn_benchmark.structures.image_list import ImageList
from maskrcnn_benchmark.text import build_tokenizer, tokenize_captions
from maskrcnn_benchmark.utils.comm import get_world_size, is_main_process, synchronize

logger = logging.getLogger("maskrcnn_benchmark.inference")

CharSpan = tuple[int, int]
LabelToTokens = dict[int, list[int]]


def build_detection_prompt(names: Sequence[str], separation_tokens: str,
                           caption_prompt: Sequence[dict] | None = None,
                           additional_labels: Sequence[str] | None = None) -> tuple[str, list[list[CharSpan]]]:
    """The caption listing `names` (or the caption prompt's prefix/name/suffix entries) and each name's char span.

    The caption prompt's names are used as written (training cleans them), as in the official evaluation.
    `additional_labels` are appended after the names, without spans (official "suppress query").
    """
    check_caption_prompt_length(caption_prompt, len(names))
    shown = [caption_prompt[index]["name"] for index in range(len(names))] if caption_prompt is not None else names
    caption, spans = join_names(shown, separation_tokens, caption_prompt)
    if additional_labels is not None:
        caption += separation_tokens + separation_tokens.join(additional_labels)
    return caption, [[span] for span in spans]


def check_prompt_fits(label_to_tokens: LabelToTokens, max_query_len: int, caption: str) -> None:
    """Raise when a label's tokens lie beyond the model's MAX_QUERY_LEN (they would be truncated away)."""
    too_far = sorted(label for label, tokens in label_to_tokens.items() if max(tokens) >= max_query_len)
    if too_far:
        raise ValueError(
            f"The prompt is longer than MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN={max_query_len} tokens: labels "
            f"{too_far} would be truncated away. Split the categories over several prompts with "
            f"TEST.CHUNKED_EVALUATION (classes per prompt). Prompt: {caption!r}"
        )


def create_queries_and_maps(labels: Sequence[int], label_list: Sequence[str], cfg, tokenizer=None,
                            additional_labels: Sequence[str] | None = None) -> tuple[str, LabelToTokens]:
    """The detection prompt of these classes and its label -> token indices map (keys are `labels`)."""
    names = [clean_name(name) for name in label_list]
    use_prompt = cfg.DATASETS.USE_CAPTION_PROMPT and cfg.DATASETS.CAPTION_PROMPT
    caption_prompt = load_list_option(cfg.DATASETS.CAPTION_PROMPT, "CAPTION_PROMPT") if use_prompt else None
    caption, tokens_positive = build_detection_prompt(names, cfg.DATASETS.SEPARATION_TOKENS, caption_prompt,
                                                      additional_labels)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    tokenized = tokenizer(caption, return_tensors="pt")
    label_to_tokens = create_positive_dict(tokenized, tokens_positive, labels)
    check_prompt_fits(label_to_tokens, cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN, caption)
    return caption, label_to_tokens


def create_queries_and_maps_from_dataset(dataset, cfg, tokenizer=None) -> tuple[list[str], list[LabelToTokens]]:
    """One prompt for all the dataset's classes, or one per TEST.CHUNKED_EVALUATION classes (label order)."""
    categories = dataset.categories()
    labels = sorted(categories)
    chunk = cfg.TEST.CHUNKED_EVALUATION if cfg.TEST.CHUNKED_EVALUATION != -1 else max(len(labels), 1)
    additional = cfg.DATASETS.SUPRESS_QUERY if cfg.DATASETS.USE_SUPRESS_QUERY else None
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    queries, maps = [], []
    for start in range(0, len(labels), chunk):
        chunk_labels = labels[start:start + chunk]
        query, label_to_tokens = create_queries_and_maps(
            chunk_labels, [categories[label] for label in chunk_labels], cfg, tokenizer, additional)
        queries.append(query)
        maps.append(label_to_tokens)
    logger.info("All queries: %s", queries)
    return queries, maps


def create_positive_map_label_to_token_from_positive_map(positive_map: torch.Tensor, plus: int = 0
                                                         ) -> LabelToTokens:
    """(labels, tokens) 0/1 (or normalised) matrix -> {row + plus: indices of the row's non-zero tokens}."""
    return {row + plus: torch.nonzero(positive_map[row], as_tuple=True)[0].tolist()
            for row in range(len(positive_map))}


def accumulate_predictions_from_multiple_gpus(predictions_per_gpu: dict[int, BoxList]
                                              ) -> dict[int, BoxList] | None:
    """Gather every rank's {dataset index: BoxList} on rank 0 (None on the other ranks)."""
    world_size = get_world_size()
    if world_size == 1:
        gathered = [predictions_per_gpu]
    else:
        gathered = [None] * world_size if is_main_process() else None
        torch.distributed.gather_object(predictions_per_gpu, gathered, dst=0)
    if not is_main_process():
        return None
    predictions: dict[int, BoxList] = {}
    for part in gathered:
        predictions.update(part)
    indices = sorted(predictions)
    if indices and len(indices) != indices[-1] + 1:
        logger.warning("Number of images that were gathered from multiple processes is not a contiguous set. "
                       "Some images might be missing from the evaluation")
    return predictions


class PromptedDetector:
    """Calls a grounding model on image batches with fixed prompts (one per class chunk), tokenised once."""

    def __init__(self, model: nn.Module, queries: Sequence[str], label_to_tokens: Sequence[LabelToTokens],
                 tokenizer, max_query_len: int, pad_max: bool, device: torch.device):
        self.model = model
        self.queries = list(queries)
        self.label_to_tokens = list(label_to_tokens)
        self.device = device
        self.tokenized = [
            {key: value.to(device) for key, value in tokenize_captions(tokenizer, [query], max_query_len,
                                                                        pad_max).items()}
            for query in self.queries
        ]

    @torch.no_grad()
    def __call__(self, images) -> list[BoxList]:
        """Detections of every prompt, concatenated per image, on the CPU (model input coordinates)."""
        images = images.to(self.device)
        batch_size = images.tensors.shape[0]
        per_prompt = []
        for query, positive_map, tokenized in zip(self.queries, self.label_to_tokens, self.tokenized):
            batch_tokens = {key: value.repeat(batch_size, 1) for key, value in tokenized.items()}
            output = self.model(images, captions=[query] * batch_size, positive_map=positive_map,
                                tokenized=batch_tokens)
            per_prompt.append([o.to("cpu") for o in output])
        if len(per_prompt) == 1:
            return per_prompt[0]
        return [cat_boxlist(list(per_image)) for per_image in zip(*per_prompt)]


def _describe_images(dataset, indices: Sequence[int]) -> str:
    """The images of these dataset indices, by file name where the dataset knows it."""
    if not hasattr(dataset, "get_img_info"):
        return f"the images of dataset indices {list(indices)}"
    names = [dataset.get_img_info(index).get("file_name", f"index {index}") for index in indices]
    return f"the images {names} (dataset indices {list(indices)})"


def _run_model(detector: PromptedDetector, data_loader, subset: int, verbose: bool) -> dict[int, BoxList]:
    """{dataset index: detections} over the loader (the first `subset` batches when subset >= 0)."""
    results: dict[int, BoxList] = {}
    batches = tqdm(data_loader, disable=not (verbose and is_main_process()))
    for i, batch in enumerate(batches):
        if i == subset:
            break
        images, _targets, image_ids, *_ = batch
        try:
            detections = detector(images)
        except NonFiniteOffsetError as error:
            images_named = _describe_images(data_loader.dataset, [int(index) for index in image_ids])
            raise error.located(detector.model, f"Evaluation stopped: NaN/inf inside the model on {images_named}"
                                ) from None
        results.update(zip((int(index) for index in image_ids), detections))
    return results


def _check_eval_settings(cfg) -> None:
    """Refuse the evaluation options that are not built (test-time augmentation, other tasks)."""
    check_supported(cfg, ("TEST",))
    # The official default task "" calls the model without a prompt, which a grounding model cannot run:
    # the class-name prompt is used for it too.


def _is_grounding_evaluation(cfg, dataset, dataset_name: str) -> bool:
    """Whether TEST.EVAL_TASK asks for phrase grounding; raise when task and dataset do not go together."""
    grounding = cfg.TEST.EVAL_TASK == "grounding"
    flickr = isinstance(dataset, FlickrDataset)
    if grounding and not flickr:
        raise ValueError(f"TEST.EVAL_TASK grounding evaluates the Flickr30k sets (names containing 'flickr'); "
                         f"{dataset_name} is a {type(dataset).__name__}: evaluate it with TEST.EVAL_TASK detection.")
    if flickr and not grounding:
        raise ValueError(f"{dataset_name} is a Flickr30k phrase-grounding set: evaluate it with TEST.EVAL_TASK "
                         f"grounding (got {cfg.TEST.EVAL_TASK!r}).")
    return grounding


def single_image(images: ImageList, index: int, size_divisible: int) -> ImageList:
    """Image `index` of a batch as a batch of one, padded as if it had been batched alone."""
    height, width = images.image_sizes[index]
    if size_divisible > 0:
        height_padded = -(-height // size_divisible) * size_divisible
        width_padded = -(-width // size_divisible) * size_divisible
    else:
        height_padded, width_padded = height, width
    return ImageList(images.tensors[index:index + 1, :, :height_padded, :width_padded], [(height, width)])


def phrase_boxes(detections: BoxList, target: BoxList, image_info: dict) -> dict:
    """One sentence's ranked boxes per phrase (label k + 1 is phrase k) in original pixels (xyxy), best first."""
    detections = detections.resize((image_info["width"], image_info["height"])).convert("xyxy")
    num_phrases = len(target.get_field("positive_map_eval"))
    boxes: list[list[list[float]]] = [[] for _ in range(num_phrases)]
    scores: list[list[float]] = [[] for _ in range(num_phrases)]
    order = torch.argsort(detections.get_field("scores"), descending=True, stable=True).tolist()
    all_boxes, all_scores = detections.bbox.tolist(), detections.get_field("scores").tolist()
    for i in order:
        phrase = int(detections.get_field("labels")[i]) - 1
        boxes[phrase].append(all_boxes[i])
        scores[phrase].append(all_scores[i])
    return {"image_id": target.get_field("original_img_id"), "sentence_id": target.get_field("sentence_id"),
            "boxes": boxes, "scores": scores}


@torch.no_grad()
def _ground_phrases(model: nn.Module, data_loader, cfg, device: torch.device, verbose: bool) -> dict[int, dict]:
    """{dataset index: phrase_boxes} over the loader; each image is run alone with its own caption."""
    tokenizer = build_tokenizer(cfg)
    language = cfg.MODEL.LANGUAGE_BACKBONE
    results: dict[int, dict] = {}
    for i, batch in enumerate(tqdm(data_loader, disable=not (verbose and is_main_process()))):
        if i == cfg.TEST.SUBSET:
            break
        images, targets, image_ids, *_ = batch
        for k, (target, index) in enumerate(zip(targets, image_ids)):
            caption = target.get_field("caption")
            # Phrase k of the sentence is label k + 1 (labels start at 1 in the VL head).
            label_to_tokens = create_positive_map_label_to_token_from_positive_map(
                target.get_field("positive_map_eval"), plus=1)
            tokenized = {key: value.to(device) for key, value in
                         tokenize_captions(tokenizer, [caption], language.MAX_QUERY_LEN, language.PAD_MAX).items()}
            image = single_image(images, k, cfg.DATALOADER.SIZE_DIVISIBILITY).to(device)
            output = model(image, captions=[caption], positive_map=label_to_tokens, tokenized=tokenized)[0]
            info = data_loader.dataset.get_img_info(int(index))
            results[int(index)] = phrase_boxes(output.to("cpu"), target, info)
    return results


def grounding_inference(model: nn.Module, data_loader, dataset_name: str, device: torch.device,
                        output_folder: str | None, cfg, verbose: bool = True) -> dict[str, float] | None:
    """Ground each Flickr30k sentence's phrases and return the recall scores on rank 0 (None elsewhere).

    Writes `predictions.pth` (the ranked boxes per phrase) and the official `bbox.csv` into `output_folder`.
    """
    dataset = data_loader.dataset
    if cfg.TEST.EXPECTED_RESULTS:
        raise ValueError("TEST.EXPECTED_RESULTS checks box AP (COCO, LVIS); the Flickr30k recall has no such "
                         "check. Leave it empty with TEST.EVAL_TASK grounding.")
    # The ground truth is read first: a wrong entities folder fails before the model runs over the split.
    ground_truth = FlickrGroundTruth(dataset.entities_dir, dataset.subset, cfg.DATASETS.FLICKR_GT_TYPE == "merged")
    if verbose:
        logger.info("Start phrase grounding on %s dataset(%d sentences).", dataset_name, len(dataset))
    model.eval()
    predictions = _ground_phrases(model, data_loader, cfg, device, verbose)
    synchronize()
    predictions = accumulate_predictions_from_multiple_gpus(predictions)
    if not is_main_process():
        return None
    ordered = [predictions[i] for i in sorted(predictions)]
    scores = evaluate_flickr_recall(ground_truth, ordered)
    for name, value in scores.items():
        logger.info("%s = %.4f", name, value)
    if output_folder:
        torch.save(ordered, os.path.join(output_folder, "predictions.pth"))
        write_flickr_csv(scores, os.path.join(output_folder, "bbox.csv"))
    return scores


def inference(model: nn.Module, data_loader, dataset_name: str, iou_types: Sequence[str] = ("bbox",),
              box_only: bool = False, device="cuda", expected_results: Sequence = (),
              expected_results_sigma_tol: float = 4, output_folder: str | None = None, cfg=None,
              verbose: bool = True):
    """Detect the dataset's classes in every image of the loader and evaluate on rank 0 (None elsewhere).

    Writes `predictions.pth` (BoxLists in model input coordinates, dataset order), `bbox.json` (COCO results in
    original image coordinates and the dataset's category ids), `bbox.csv` and `coco_results.pth` into
    `output_folder`. Returns what `evaluate` returns: (COCOResults, {iou type: COCO results list}); an LVIS
    dataset is rated with the LVIS protocol instead (`do_lvis_evaluation`: LvisResults, bbox.json, bbox.csv), and
    with TEST.EVAL_TASK grounding a Flickr30k set with phrase recall (`grounding_inference`: the scores dict).
    """
    _check_eval_settings(cfg)
    device = torch.device(device)
    dataset = data_loader.dataset
    if _is_grounding_evaluation(cfg, dataset, dataset_name):
        return grounding_inference(model, data_loader, dataset_name, device, output_folder, cfg, verbose)
    require_box_annotations(dataset, dataset_name)  # before running the model over every image
    if verbose:
        logger.info("Start evaluation on %s dataset(%d images).", dataset_name, len(dataset))
    tokenizer = build_tokenizer(cfg)
    queries, maps = create_queries_and_maps_from_dataset(dataset, cfg, tokenizer)
    language = cfg.MODEL.LANGUAGE_BACKBONE
    detector = PromptedDetector(model, queries, maps, tokenizer, language.MAX_QUERY_LEN, language.PAD_MAX, device)
    model.eval()
    start_time = time.time()
    predictions = _run_model(detector, data_loader, cfg.TEST.SUBSET, verbose)
    synchronize()
    total_time = time.time() - start_time
    num_devices = get_world_size()
    logger.info("Total inference time: %s (%s s / img per device, on %d devices)",
                datetime.timedelta(seconds=total_time), total_time * num_devices / max(len(dataset), 1),
                num_devices)
    predictions = accumulate_predictions_from_multiple_gpus(predictions)
    if not is_main_process():
        return None
    if output_folder:
        torch.save([predictions[i] for i in sorted(predictions)], os.path.join(output_folder, "predictions.pth"))
    if isinstance(dataset, LvisDetection):
        return do_lvis_evaluation(dataset, predictions, output_folder, fixed_ap=not cfg.DATASETS.LVIS_USE_NORMAL_AP,
                                  expected_results=expected_results,
                                  expected_results_sigma_tol=expected_results_sigma_tol)
    return evaluate(dataset, predictions, output_folder, box_only=box_only, iou_types=iou_types,
                    expected_results=expected_results, expected_results_sigma_tol=expected_results_sigma_tol)
