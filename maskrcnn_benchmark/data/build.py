"""Datasets, samplers and data loaders from the config (GLIP's `make_data_loader`)."""
import bisect
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch.utils.data
import yaml
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from maskrcnn_benchmark.config.compat import check_supported
from maskrcnn_benchmark.config.paths_catalog import DatasetCatalog
from maskrcnn_benchmark.solver.build import max_iter_from_epochs
from maskrcnn_benchmark.text import build_tokenizer
from maskrcnn_benchmark.utils.comm import get_world_size

from . import datasets as D
from . import samplers
from .collate_batch import BatchCollator
from .transforms import build_transforms

logger = logging.getLogger(__name__)


def compute_max_iter(cfg, dataset_len: int) -> int:
    """Training iterations: SOLVER.MAX_EPOCH * dataset_len // SOLVER.IMS_PER_BATCH when MAX_EPOCH > 0, else MAX_ITER.

    GLIP writes this value into cfg.SOLVER.MAX_ITER; here the config is left untouched and the train loader's
    `batch_sampler.num_iterations` (also `len(loader)`) holds it.
    """
    if cfg.SOLVER.MAX_EPOCH > 0:
        return max_iter_from_epochs(cfg.SOLVER.MAX_EPOCH, dataset_len, cfg.SOLVER.IMS_PER_BATCH)
    return cfg.SOLVER.MAX_ITER


def load_list_option(value: str | Sequence[dict], key: str) -> list[dict]:
    """A list of dicts given inline, as a JSON string, or as the path of a YAML/JSON file """
    if not isinstance(value, str):
        return [dict(item) for item in value]
    if os.path.isfile(value):
        with open(value) as f:
            return yaml.safe_load(f)
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"{key} is neither a file nor a JSON list: {value[:80]!r}") from err


def dataset_suffix(cfg, is_train: bool) -> str:
    """DATASETS.TRAIN_DATASETNAME_SUFFIX or TEST_DATASETNAME_SUFFIX: appended to each training or test set name."""
    return cfg.DATASETS.TRAIN_DATASETNAME_SUFFIX if is_train else cfg.DATASETS.TEST_DATASETNAME_SUFFIX


def registered_datasets(cfg, is_train: bool) -> dict[str, dict[str, str]]:
    """DATASETS.REGISTER entries keyed by name + TRAIN/TEST_DATASETNAME_SUFFIX, as GLIP registers them."""
    suffix = dataset_suffix(cfg, is_train)
    return {name + suffix: dict(attrs) for name, attrs in cfg.DATASETS.REGISTER.items()}


def dataset_options(cfg, factory: str, is_train: bool, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Constructor arguments (besides paths and transforms) that the config gives a dataset class."""
    datasets_cfg = cfg.DATASETS
    options: dict[str, Any] = {}
    if datasets_cfg.USE_OVERRIDE_CATEGORY and datasets_cfg.OVERRIDE_CATEGORY:
        options["override_category"] = load_list_option(datasets_cfg.OVERRIDE_CATEGORY, "OVERRIDE_CATEGORY")
    if factory == "COCODataset":
        return dict(options, remove_images_without_annotations=is_train)
    options.update(tokenizer=tokenizer, max_query_len=cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN)
    if datasets_cfg.USE_CAPTION_PROMPT and datasets_cfg.CAPTION_PROMPT:
        options["caption_prompt"] = load_list_option(datasets_cfg.CAPTION_PROMPT, "CAPTION_PROMPT")
    if is_train:
        options.update(
            separation_tokens=datasets_cfg.SEPARATION_TOKENS,
            disable_shuffle=datasets_cfg.DISABLE_SHUFFLE,
            add_detection_prompt=datasets_cfg.ADD_DET_PROMPT,
            few_shot=datasets_cfg.FEW_SHOT,
            shuffle_seed=datasets_cfg.SHUFFLE_SEED,
            disable_clip_to_image=datasets_cfg.DISABLE_CLIP_TO_IMAGE,
            no_mask_for_od=cfg.MODEL.DYHEAD.FUSE_CONFIG.NO_MASK_FOR_OD,
        )
    return options


def _check_dataset_config(cfg, dataset_names: Sequence[str]) -> None:
    if not isinstance(dataset_names, (list, tuple)) or not all(isinstance(n, str) for n in dataset_names):
        raise ValueError(f"DATASETS.TRAIN/TEST should be a list of dataset names, got {dataset_names!r}")
    if not dataset_names:
        raise ValueError("No dataset named in DATASETS.TRAIN/TEST")
    check_supported(cfg, ("DATASETS", "DATALOADER", "INPUT", "AUGMENT"))  # the data options that are not built


def build_dataset(cfg, dataset_names: Sequence[str], transforms: Callable | None,
                  tokenizer: PreTrainedTokenizerBase, is_train: bool = True) -> list[Dataset]:
    """One dataset per name (test), or a single (concatenated) training dataset in a list."""
    _check_dataset_config(cfg, dataset_names)
    suffix = dataset_suffix(cfg, is_train)
    registered = registered_datasets(cfg, is_train)
    copies = cfg.DATASETS.GENERAL_COPY if is_train else cfg.DATASETS.GENERAL_COPY_TEST
    datasets = []
    for name in dataset_names:
        name = name + suffix
        entry = DatasetCatalog.get(name, registered)
        if is_train and entry["factory"] != "CocoGrounding":
            raise ValueError(f"Training dataset {name!r} is a detection dataset without captions; GLIP trains on "
                             "names containing '_grounding' (e.g. coco_grounding_train, or set "
                             "DATASETS.TRAIN_DATASETNAME_SUFFIX '_grounding').")
        factory = getattr(D, entry["factory"])
        options = dataset_options(cfg, entry["factory"], is_train, tokenizer)
        dataset = factory(transforms=transforms, **entry["args"], **options)
        if copies != -1:
            dataset = D.DuplicateDataset(dataset, copies)
        logger.info("%s has %d data points (%s)", name, len(dataset), entry["factory"])
        datasets.append(dataset)
    if not is_train:
        return datasets
    return [datasets[0] if len(datasets) == 1 else D.ConcatDataset(datasets)]


def make_data_sampler(dataset: Dataset, shuffle: bool, distributed: bool, num_replicas: int | None = None,
                      rank: int | None = None, use_random_seed: bool = False) -> torch.utils.data.Sampler:
    """DistributedSampler when distributed or shuffling (one replica), else a sequential sampler.

    A single process shuffles like one replica of a distributed run (each pass seeded with the iteration where it
    starts), so that a resumed run continues with the same order; GLIP used torch's global RNG there.
    """
    if distributed:
        return samplers.DistributedSampler(dataset, shuffle=shuffle, num_replicas=num_replicas, rank=rank,
                                           use_random=use_random_seed)
    if shuffle:
        return samplers.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, use_random=use_random_seed)
    return torch.utils.data.SequentialSampler(dataset)


def _aspect_ratio_groups(dataset: Dataset, bins: Sequence[float]) -> list[int]:
    """Group id of each image: the bin of its height / width ratio."""
    bins = sorted(bins)
    groups = []
    for index in range(len(dataset)):
        info = dataset.get_img_info(index)
        groups.append(bisect.bisect_right(bins, float(info["height"]) / float(info["width"])))
    return groups


def make_batch_data_sampler(dataset: Dataset, sampler: torch.utils.data.Sampler, aspect_grouping: Sequence[float],
                            images_per_batch: int, num_iters: int | None = None, start_iter: int = 0,
                            drop_last: bool = False) -> torch.utils.data.BatchSampler:
    """Batches (grouped by aspect ratio when `aspect_grouping` holds bin edges), repeated for `num_iters`."""
    if aspect_grouping:
        group_ids = _aspect_ratio_groups(dataset, aspect_grouping)
        batch_sampler = samplers.GroupedBatchSampler(sampler, group_ids, images_per_batch, drop_uneven=drop_last)
    else:
        batch_sampler = torch.utils.data.BatchSampler(sampler, images_per_batch, drop_last=drop_last)
    if num_iters is not None:
        batch_sampler = samplers.IterationBasedBatchSampler(batch_sampler, num_iters, start_iter)
    return batch_sampler


def _images_per_process(images_per_batch: int, num_processes: int, key: str) -> int:
    if images_per_batch % num_processes != 0:
        raise ValueError(f"{key} ({images_per_batch}) must be divisible by the number of processes ({num_processes})")
    return images_per_batch // num_processes


def _pins_memory(device: str) -> bool:
    """Whether batches for MODEL.DEVICE `device` go to page-locked memory: for CUDA devices, when CUDA is there."""
    return str(device).startswith("cuda") and torch.cuda.is_available()


def make_data_loader(cfg, is_train: bool = True, is_distributed: bool = False, num_replicas: int | None = None,
                     rank: int | None = None, start_iter: int = 0) -> DataLoader | list[DataLoader]:
    """The training DataLoader (is_train), or one test DataLoader per name in DATASETS.TEST.

    Training batches run for `compute_max_iter(cfg, len(dataset))` iterations (`loader.batch_sampler.
    num_iterations`), from `start_iter`. The config is never modified. Each batch is a `CollatedBatch`.
    """
    num_processes = num_replicas or get_world_size()
    if is_train:
        images_per_process = _images_per_process(cfg.SOLVER.IMS_PER_BATCH, num_processes, "SOLVER.IMS_PER_BATCH")
        shuffle = True
    else:
        images_per_process = _images_per_process(cfg.TEST.IMS_PER_BATCH, num_processes, "TEST.IMS_PER_BATCH")
        shuffle = is_distributed
        start_iter = 0
    tokenizer = build_tokenizer(cfg)
    dataset_names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
    datasets = build_dataset(cfg, dataset_names, build_transforms(cfg, is_train), tokenizer, is_train)
    aspect_grouping = [1] if cfg.DATALOADER.ASPECT_RATIO_GROUPING else []
    collator = BatchCollator(cfg.DATALOADER.SIZE_DIVISIBILITY, tokenizer, cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN,
                             cfg.MODEL.LANGUAGE_BACKBONE.PAD_MAX)
    loaders = []
    for dataset in datasets:
        num_iters = compute_max_iter(cfg, len(dataset)) if is_train else None
        sampler = make_data_sampler(dataset, shuffle, is_distributed, num_replicas, rank,
                                    use_random_seed=cfg.DATALOADER.USE_RANDOM_SEED)
        batch_sampler = make_batch_data_sampler(dataset, sampler, aspect_grouping, images_per_process, num_iters,
                                                start_iter, drop_last=is_train)
        workers = cfg.DATALOADER.NUM_WORKERS
        # Pinned batches copy to a GPU asynchronously; persistent workers are not restarted at each pass.
        loaders.append(DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collator, num_workers=workers,
                                  pin_memory=_pins_memory(cfg.MODEL.DEVICE), persistent_workers=workers > 0))
    return loaders[0] if is_train else loaders
