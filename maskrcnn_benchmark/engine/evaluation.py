"""The one evaluation entry: during training, after training (tools/train_net.py, tools/finetune.py) and in
tools/test_grounding_net.py, a model is rated on a dataset through `evaluate_model` or on every DATASETS.TEST set
through `evaluate_test_sets`, both running engine.inference."""
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from maskrcnn_benchmark.data import make_data_loader
from maskrcnn_benchmark.utils.comm import broadcast_object, synchronize
from maskrcnn_benchmark.utils.ema import unwrap_model

from .inference import inference


def headline_metric(result: Any) -> float:
    """The number a run is judged by: box AP of a COCO or LVIS result, Recall@1 over all phrases of a grounding
    (Flickr30k) result, 0.0 for None (the result of processes other than rank 0)."""
    if result is None:
        return 0.0
    if isinstance(result, dict):
        return result["Recall@1_all"]
    return result[0].results["bbox"]["AP"]


def run_inference(cfg, model: nn.Module, data_loader: Iterable, device: torch.device, dataset_name: str,
                  output_folder: str | None, verbose: bool) -> Any:
    """engine.inference with the config's evaluation settings; the result on rank 0, None elsewhere."""
    # Proposal evaluation belongs to RPN-only detectors; coco_eval refuses it with a message saying so.
    box_only = cfg.MODEL.RPN_ONLY and (cfg.MODEL.RPN_ARCHITECTURE == "RPN" or cfg.DATASETS.CLASS_AGNOSTIC)
    return inference(unwrap_model(model), data_loader, dataset_name=dataset_name, iou_types=("bbox",),
                     box_only=box_only, device=device, expected_results=cfg.TEST.EXPECTED_RESULTS,
                     expected_results_sigma_tol=cfg.TEST.EXPECTED_RESULTS_SIGMA_TOL, output_folder=output_folder,
                     cfg=cfg, verbose=verbose)


def evaluate_model(cfg, model: nn.Module, data_loader: Iterable, device: torch.device,
                   dataset_name: str = "val", output_folder: str | None = None, verbose: bool = False) -> float:
    """The headline metric of `model` on one loader's dataset, computed on rank 0 and shared with every process."""
    result = run_inference(cfg, model, data_loader, device, dataset_name, output_folder, verbose)
    return broadcast_object(headline_metric(result))


def evaluate_test_sets(cfg, model: nn.Module, device: torch.device, distributed: bool,
                       output_dir: str | None) -> dict[str, Any]:
    """Evaluate `model` on every DATASETS.TEST set, writing into output_dir/inference/<name>/ (nothing without
    `output_dir`); dataset name -> its result on rank 0, None on the other processes."""
    results = {}
    data_loaders = make_data_loader(cfg, is_train=False, is_distributed=distributed)
    # make_data_loader refuses anything but a list of names (GLIP's nested groups included).
    for name, data_loader in zip(cfg.DATASETS.TEST, data_loaders):
        folder = os.path.join(output_dir, "inference", name) if output_dir else None
        if folder:
            os.makedirs(folder, exist_ok=True)
        results[name] = run_inference(cfg, model, data_loader, device, name, folder, verbose=True)
        synchronize()
    return results


def headline_metrics(results: dict[str, Any]) -> dict[str, float]:
    """Each result's headline metric, the same on every process (a collective: all processes call it)."""
    return broadcast_object({name: headline_metric(result) for name, result in results.items()})
