"""Training/eval data pipeline against the official CocoGrounding golden samples, plus error handling."""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from yacs.config import CfgNode

from maskrcnn_benchmark.config.defaults import _C as default_cfg
from maskrcnn_benchmark.config.paths_catalog import DatasetCatalog, try_to_find
from maskrcnn_benchmark.data import BatchCollator, CollatedBatch, compute_max_iter, make_data_loader
from maskrcnn_benchmark.data.build import dataset_options
from maskrcnn_benchmark.data.datasets import COCODataset, CocoGrounding
from maskrcnn_benchmark.data.datasets.modulated_coco import few_shot_image_ids
from maskrcnn_benchmark.data.samplers import DistributedSampler, GroupedBatchSampler, IterationBasedBatchSampler
from maskrcnn_benchmark.data.transforms import build_transforms, resized_shape
from maskrcnn_benchmark.text import load_shipped_tokenizer, tokenize_captions

FIXTURE = Path(__file__).parent / "fixtures" / "data_pipeline"
GOLDEN = torch.load(FIXTURE / "pipeline.pt", weights_only=True)


def dataset_cfg() -> CfgNode:
    """The project defaults merged with the config of the golden run (a full official config dump)."""
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(FIXTURE / "config_dataset.yaml"))
    return cfg


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """DATASET folder laid out as the README of the fixture describes (train and val share the 3 images)."""
    annotations = tmp_path / "coco" / "annotations"
    annotations.mkdir(parents=True)
    for split in ("train2017", "val2017"):
        os.symlink((FIXTURE / "images").resolve(), tmp_path / "coco" / split)
        os.symlink((FIXTURE / "annotations" / "instances_train.json").resolve(),
                   annotations / f"instances_{split}.json")
    monkeypatch.setenv("DATASET", str(tmp_path))
    return tmp_path


def seeded_item(dataset, index, seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return dataset[index]


def assert_sample_equal(image, target, index, golden):
    assert index == golden["index"]
    assert image.shape == golden["image"].shape
    torch.testing.assert_close(image, golden["image"], atol=1e-5, rtol=0)
    assert target.size == tuple(golden["target_size_wh"]) and target.mode == golden["target_mode"]
    torch.testing.assert_close(target.bbox, golden["boxes_xyxy"], atol=1e-5, rtol=0)
    assert target.get_field("caption") == golden["caption"]
    assert torch.equal(target.get_field("labels"), golden["labels"])
    assert torch.equal(target.get_field("positive_map"), golden["positive_map"])
    assert target.get_field("tokens_positive") == golden["tokens_positive"]
    assert target.fields() == list(golden["fields"])
    for name, expected in golden["fields"].items():
        value = target.get_field(name)
        if isinstance(expected, torch.Tensor):
            assert value.dtype == expected.dtype and torch.equal(value, expected), name
        else:
            assert value == expected, name


def _int_keys(mapping):
    return {int(k): v for k, v in mapping.items()}


def golden_samples(dataset):
    return [seeded_item(dataset, s["index"], s["seed"]) for s in GOLDEN["samples"]]


# ---- golden: official CocoGrounding samples and BatchCollator ------------------------------------------------
def test_training_samples_match_official(data_root):
    loader = make_data_loader(dataset_cfg(), is_train=True)
    dataset = loader.dataset
    assert isinstance(dataset, CocoGrounding) and len(dataset) == GOLDEN["meta"]["dataset_len"]
    assert dataset.ids == GOLDEN["meta"]["dataset_ids_sorted"]
    assert dataset.json_category_id_to_contiguous_id == _int_keys(GOLDEN["meta"]["json_category_id_to_contiguous_id"])
    assert dataset.ind_to_class == _int_keys(GOLDEN["meta"]["ind_to_class"])
    for (image, target, index), golden in zip(golden_samples(dataset), GOLDEN["samples"]):
        assert_sample_equal(image, target, index, golden)


def test_collated_batch_matches_official(data_root):
    cfg = dataset_cfg()
    dataset = make_data_loader(cfg, is_train=True).dataset
    tokenizer = load_shipped_tokenizer()
    batch = BatchCollator(cfg.DATALOADER.SIZE_DIVISIBILITY, tokenizer, 256, True)(golden_samples(dataset))
    golden = GOLDEN["collated"]
    assert isinstance(batch, CollatedBatch)
    torch.testing.assert_close(batch.images.tensors, golden["tensors"], atol=1e-5, rtol=0)
    assert batch.images.image_sizes == [tuple(s) for s in golden["image_sizes_hw"]]
    assert list(batch.img_ids) == golden["img_ids"]
    assert torch.equal(batch.positive_map, golden["positive_map"])
    assert torch.equal(batch.greenlight_map, golden["greenlight_map"])
    assert batch.positive_map_eval is None
    assert batch.captions == [s["caption"] for s in GOLDEN["samples"]]
    expected = tokenize_captions(tokenizer, batch.captions, 256, True)
    for key in ("input_ids", "attention_mask", "special_tokens_mask"):
        assert batch.tokenized[key].shape == (3, 256) and torch.equal(batch.tokenized[key], expected[key])
    real = GOLDEN["samples"][0]["caption_input_ids"]
    assert torch.equal(batch.tokenized["input_ids"][0, :len(real)], real)
    assert batch.tokenized["attention_mask"][0].sum() == len(real)


def test_dataloader_batches_and_iteration_count(data_root):
    cfg = dataset_cfg()
    cfg.SOLVER.MAX_ITER = 7
    before = cfg.dump()
    loader = make_data_loader(cfg, is_train=True, start_iter=28)
    assert cfg.dump() == before  # the config is never written
    # MAX_EPOCH 30 * 3 images // 3 per batch
    assert loader.batch_sampler.num_iterations == compute_max_iter(cfg, 3) == 30 == len(loader)
    batches = list(loader)
    assert len(batches) == 2  # iterations 29 and 30
    by_index = {s["index"]: s for s in GOLDEN["samples"]}
    for batch in batches:
        assert sorted(batch.img_ids) == [0, 1, 2]
        for image_size, target, index in zip(batch.images.image_sizes, batch.targets, batch.img_ids):
            golden = by_index[index]
            assert image_size == tuple(golden["image_size_hw"])
            torch.testing.assert_close(target.bbox, golden["boxes_xyxy"], atol=1e-5, rtol=0)
            assert torch.equal(target.get_field("positive_map"), golden["positive_map"])
    cfg.SOLVER.MAX_EPOCH = 0
    assert len(make_data_loader(cfg, is_train=True)) == 7 == compute_max_iter(cfg, 3)


def test_register_and_name_suffix_route_to_grounding(tmp_path, monkeypatch):
    monkeypatch.delenv("DATASET", raising=False)
    cfg = dataset_cfg()
    cfg.DATASETS.TRAIN = ("mini",)
    cfg.DATASETS.TRAIN_DATASETNAME_SUFFIX = "_grounding"
    paths = {"img_dir": FIXTURE / "images", "ann_file": FIXTURE / "annotations" / "instances_train.json"}
    cfg.DATASETS.REGISTER = CfgNode({"mini": {key: str(path.resolve()) for key, path in paths.items()}})
    dataset = make_data_loader(cfg, is_train=True).dataset
    assert isinstance(dataset, CocoGrounding)
    assert "mini_grounding" not in DatasetCatalog.DATASETS  # no process-wide registration
    image, target, index = seeded_item(dataset, 2, 0)
    assert_sample_equal(image, target, index, GOLDEN["samples"][2])


def test_general_copy_repeats_dataset(data_root):
    cfg = dataset_cfg()
    cfg.DATASETS.GENERAL_COPY = 4
    loader = make_data_loader(cfg, is_train=True)
    assert len(loader.dataset) == 12 and loader.batch_sampler.num_iterations == 30 * 12 // 3
    image, target, index = seeded_item(loader.dataset, 7, 0)  # 7 % 3 == 1
    assert_sample_equal(image, target, index, GOLDEN["samples"][1])
    assert loader.dataset.ind_to_class == _int_keys(GOLDEN["meta"]["ind_to_class"])


def test_eval_loader_uses_detection_dataset(data_root):
    cfg = dataset_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 200
    cfg.TEST.IMS_PER_BATCH = 2
    loaders = make_data_loader(cfg, is_train=False)
    assert isinstance(loaders, list) and len(loaders) == 1
    dataset = loaders[0].dataset
    assert isinstance(dataset, COCODataset) and dataset.ids == [3, 7, 11]
    assert dataset.categories() == _int_keys(GOLDEN["meta"]["ind_to_class"])
    batches = list(loaders[0])
    assert [list(b.img_ids) for b in batches] == [[0, 1], [2]]  # sequential, last batch kept
    image_sizes = [size for b in batches for size in b.images.image_sizes]
    assert image_sizes == [(199, 115), (128, 170), (128, 128)]  # int(115 * 260 / 150) = 199
    assert all(b.positive_map is None and b.tokenized is None and b.captions is None for b in batches)
    # Image 7: crowd box dropped; boxes clipped and scaled by 170/240 and 128/180.
    target = batches[0].targets[1]
    assert target.get_field("labels").tolist() == [4, 2, 1]
    expected = torch.tensor([20.5, 30.25, 79.5, 149.25]) * torch.tensor([170 / 240, 128 / 180] * 2)
    torch.testing.assert_close(target.bbox[0], expected)


def test_training_on_a_detection_name_is_refused(data_root):
    cfg = dataset_cfg()
    cfg.DATASETS.TRAIN = ("coco_2017_train",)
    with pytest.raises(ValueError, match="_grounding"):
        make_data_loader(cfg, is_train=True)


def test_unknown_dataset_name(data_root):
    cfg = dataset_cfg()
    cfg.DATASETS.TRAIN = ("flickr30k_train",)
    with pytest.raises(KeyError, match="flickr30k_train.*REGISTER"):
        make_data_loader(cfg, is_train=True)


def test_try_to_find(data_root, monkeypatch):
    assert try_to_find("coco/train2017") == os.path.join(str(data_root), "coco/train2017")
    assert try_to_find("coco/train2017", return_dir=True) == str(data_root)
    with pytest.raises(FileNotFoundError, match="coco/nothing.json.*DATASET"):
        try_to_find("coco/nothing.json")


# ---- caption construction inside the dataset -----------------------------------------------------------------
def grounding_dataset(**options):
    options = {"transforms": None, "disable_shuffle": True, **options}
    return CocoGrounding(str(FIXTURE / "images"), str(FIXTURE / "annotations" / "instances_train.json"),
                         tokenizer=load_shipped_tokenizer(), separation_tokens=". ", **options)


def test_shuffled_captions_keep_boxes_on_their_names():
    dataset = grounding_dataset(disable_shuffle=False)
    tokenizer = dataset.tokenizer
    captions = set()
    for seed in range(6):
        _, target, _ = seeded_item(dataset, 2, seed)
        caption = target.get_field("caption")
        captions.add(caption)
        assert sorted(caption.split(". ")) == sorted(["traffic light", "car", "mouse ", "person", "hot dog"])
        ids = tokenizer(caption)["input_ids"]
        for label, row in zip(target.get_field("labels").tolist(), target.get_field("positive_map")):
            name = {1: "traffic light", 2: "car", 5: "hot dog"}[label]
            assert tokenizer.decode([ids[i] for i in torch.nonzero(row).flatten()]) == name
    assert len(captions) > 1
    _, first, _ = seeded_item(dataset, 2, 3)
    _, second, _ = seeded_item(dataset, 2, 3)
    assert first.get_field("caption") == second.get_field("caption")  # the shuffle follows Python's seed


def test_categories_beyond_max_query_len_are_dropped_with_their_boxes(caplog):
    # [CLS] traffic light . car . mouse . person . hot | dog [SEP]: "hot dog" does not fit in 12 tokens.
    dataset = grounding_dataset(max_query_len=12)
    _, target, _ = dataset[0]
    assert target.get_field("caption") == "traffic light. car. mouse . person"
    assert target.get_field("labels").tolist() == [3, 4]  # the hot dog box (label 5) is gone
    assert target.get_field("positive_map").shape == (2, 12)
    assert "MAX_QUERY_LEN=12" in caplog.text
    _, target, _ = grounding_dataset(max_query_len=8)[1]
    assert target.get_field("caption") == "traffic light. car. mouse "
    assert target.get_field("labels").tolist() == [2, 1]
    assert torch.nonzero(target.get_field("positive_map")).tolist() == [[0, 4], [1, 1], [1, 2]]
    assert len(target.get_field("boxes")) == len(target) == len(target.get_field("tokens_positive"))


def test_dataset_options():
    _, target, _ = grounding_dataset(add_detection_prompt=True, no_mask_for_od=True)[1]
    assert target.get_field("caption").startswith("object detection : traffic light. car")
    assert torch.equal(target.get_field("greenlight_map"), torch.full((256,), -1.0))
    override = [{"id": c, "name": n} for c, n in [(12, "lamp"), (3, "auto"), (27, "rat"), (8, "human"), (20, "food")]]
    _, target, _ = grounding_dataset(override_category=override)[1]
    assert target.get_field("caption") == "lamp. auto. rat. human. food"
    # Image 3's person box reaches past the border: unclipped, it is kept as it is.
    _, target, _ = grounding_dataset(disable_clip_to_image=True)[0]
    assert target.bbox[2].tolist() == [120.0, 150.0, 179.0, 279.0]


def test_few_shot_selection():
    annotations = {1: [{"category_id": 5}], 2: [{"category_id": 5}, {"category_id": 6}], 3: [{"category_id": 5}],
                   4: [{"category_id": 6}], 5: [{"category_id": 6}]}
    assert few_shot_image_ids([1, 2, 3, 4, 5], annotations.__getitem__, 2) == [1, 2, 4]
    assert grounding_dataset(few_shot=1).ids == [3, 7]


def test_few_shot_selection_with_shuffle_seed():
    """DATASETS.SHUFFLE_SEED 3 (the official few-shot recipe's seed), worked out by hand from the official rule.

    random.Random(3).shuffle([1, 2, 3, 4, 5, 6]) gives [1, 3, 4, 6, 5, 2]. One shot each of A, B, C: image 1 takes
    A, image 3 is kept for B (A is already full, one needed category suffices), image 4 takes C; 6, 5 and 2 are
    not needed. Unshuffled, images 1 (A), 2 (B) and 4 (C) are kept instead.
    """
    categories = {1: "A", 2: "B", 3: "AB", 4: "C", 5: "C", 6: "A"}
    annotations = {img: [{"category_id": ord(c)} for c in names] for img, names in categories.items()}
    assert few_shot_image_ids(list(categories), annotations.__getitem__, 1) == [1, 2, 4]
    assert few_shot_image_ids(list(categories), annotations.__getitem__, 1, shuffle_seed=3) == [1, 3, 4]
    assert few_shot_image_ids(list(categories), annotations.__getitem__, 1, shuffle_seed=0) == [1, 2, 4]
    # The config key reaches the training set: the fixture's k-shot subset changes with the seed.
    cfg = default_cfg.clone()
    cfg.merge_from_list(["DATASETS.FEW_SHOT", "1", "DATASETS.SHUFFLE_SEED", "3"])
    options = dataset_options(cfg, "CocoGrounding", True, load_shipped_tokenizer())
    assert (options["few_shot"], options["shuffle_seed"]) == (1, 3)
    assert grounding_dataset(few_shot=1, shuffle_seed=3).ids == [7, 11, 3]


# ---- transforms ------------------------------------------------------------------------------------------------
def test_resize_rounding():
    assert resized_shape((150, 260), 256, 400) == (400, 231)  # max-size limited: round(400*150/260)
    assert resized_shape((240, 180), 256, 400) == (256, 341)  # long side truncated: int(256*240/180)
    assert resized_shape((256, 300), 256, 400) == (300, 256)  # short side already right: unchanged
    assert resized_shape((100, 1000), 800, None) == (8000, 800)


def test_flip_uses_legacy_box_convention():
    cfg = dataset_cfg()
    cfg.AUGMENT.FLIP_PROB_TRAIN = 1.0
    flipped_image, flipped, _ = grounding_dataset(transforms=build_transforms(cfg, True))[1]
    golden = GOLDEN["samples"][1]
    width = golden["target_size_wh"][0]
    box = golden["boxes_xyxy"]
    expected = torch.stack([width - box[:, 2] - 1, box[:, 1], width - box[:, 0] - 1, box[:, 3]], dim=1)
    torch.testing.assert_close(flipped.bbox, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(flipped_image, golden["image"].flip(-1), atol=1e-5, rtol=0)


def test_fix_res_and_rgb_format():
    cfg = dataset_cfg()
    cfg.INPUT.FIX_RES = True
    cfg.INPUT.TO_BGR255 = False
    cfg.INPUT.PIXEL_MEAN = [0.0, 0.0, 0.0]
    cfg.INPUT.PIXEL_STD = [1.0, 1.0, 1.0]
    image = Image.new("RGB", (50, 30), (255, 0, 0))
    tensor = build_transforms(cfg, True)(image)
    assert tensor.shape == (3, 256, 400)
    assert tensor[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


# ---- samplers and collation ------------------------------------------------------------------------------------
def test_grouped_batch_sampler():
    sampler = torch.utils.data.SequentialSampler(range(7))
    groups = [0, 1, 0, 1, 1, 0, 0]
    batches = list(GroupedBatchSampler(sampler, groups, 2))
    # batches ordered by the sampler position of their first index
    assert batches == [[0, 2], [1, 3], [4], [5, 6]]
    assert list(GroupedBatchSampler(sampler, groups, 2, drop_uneven=True)) == [[0, 2], [1, 3], [5, 6]]


def test_iteration_based_batch_sampler_sets_epoch():
    sampler = DistributedSampler(range(5), num_replicas=2, rank=1, shuffle=True)
    batch_sampler = IterationBasedBatchSampler(torch.utils.data.BatchSampler(sampler, 2, False), 5, start_iter=1)
    batches = list(batch_sampler)
    assert len(batches) == 4 and len(batch_sampler) == 5
    # Passes of 2 batches start at iterations 0, 2, 4, each a shard of the permutation seeded with its start;
    # resuming at iteration 1 continues inside the first pass, as the uninterrupted run does.
    shard = [(p + p[:1])[3:6] for p in (torch.randperm(5, generator=torch.Generator().manual_seed(e)).tolist()
                                         for e in (0, 2, 4))]
    assert batches == [shard[0][2:3], shard[1][0:2], shard[1][2:3], shard[2][0:2]]


def test_distributed_sampler_split_and_random_seed():
    shards = [list(DistributedSampler(range(5), num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert shards == [[0, 1, 2], [3, 4, 0]]
    np.random.seed(0)
    first = list(DistributedSampler(range(50), num_replicas=1, rank=0, use_random=True))
    np.random.seed(0)
    assert list(DistributedSampler(range(50), num_replicas=1, rank=0, use_random=True)) == first
    assert first != list(DistributedSampler(range(50), num_replicas=1, rank=0, use_random=False))


def test_collator_pads_to_size_divisibility():
    images = [torch.ones(3, 5, 7), torch.ones(3, 9, 4)]
    batch = BatchCollator(8)([(images[0], _target(2), 4), (images[1], _target(1), 9)])
    assert batch.images.tensors.shape == (2, 3, 16, 8)
    assert batch.images.tensors[0, :, 5:].abs().sum() == 0 and batch.images.tensors[1, :, :, 4:].abs().sum() == 0
    assert batch.img_ids == (4, 9)
    assert batch.positive_map.tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0, 0.0]] * 3
    assert batch.tokenized is None  # no tokenizer given


def _target(num_boxes):
    from maskrcnn_benchmark.structures.bounding_box import BoxList

    target = BoxList(torch.zeros(num_boxes, 4), (8, 8))
    positive_map = torch.zeros(num_boxes, 6)
    positive_map[:, 1:3] = 0.5
    target.add_field("positive_map", positive_map)
    return target


def test_loader_is_deterministic_under_a_seed(data_root):
    cfg = dataset_cfg()
    cfg.DATASETS.DISABLE_SHUFFLE = False
    cfg.AUGMENT.FLIP_PROB_TRAIN = 0.5
    cfg.AUGMENT.MULT_MIN_SIZE_TRAIN = (160, 192, 224)
    cfg.SOLVER.MAX_EPOCH = 2
    cfg.SOLVER.IMS_PER_BATCH = 1

    def run():
        random.seed(5)
        torch.manual_seed(5)
        return [(b.img_ids, b.captions, b.images.tensors, b.positive_map) for b in make_data_loader(cfg, True)]

    first, second = run(), run()
    assert len(first) == 6
    for a, b in zip(first, second):
        assert a[:2] == b[:2] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


# ---- errors ----------------------------------------------------------------------------------------------------
def _write_dataset(root, images=((1, "a.jpg"),), annotations=None, categories=None):
    img_dir = root / "images"
    img_dir.mkdir(exist_ok=True)
    for _, name in images:
        Image.new("RGB", (32, 24), (10, 20, 30)).save(img_dir / name, quality=90)
    if annotations is None:
        annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}]
    data = {
        "images": [{"id": i, "file_name": n, "width": 32, "height": 24} for i, n in images],
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "cat"}],
    }
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(data))
    return str(img_dir), str(ann_file)


def _grounding(img_dir, ann_file):
    return CocoGrounding(img_dir, ann_file, transforms=None, tokenizer=load_shipped_tokenizer())


def test_small_dataset_works(tmp_path):
    dataset = _grounding(*_write_dataset(tmp_path))
    image, target, _ = dataset[0]
    assert image.size == (32, 24) and target.get_field("caption") == "cat"
    assert target.bbox.tolist() == [[2.0, 2.0, 11.0, 11.0]]


def test_missing_image_folder(tmp_path):
    _, ann_file = _write_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="Image folder not found: .*nowhere"):
        _grounding(str(tmp_path / "nowhere"), ann_file)


def test_missing_annotation_file(tmp_path):
    img_dir, _ = _write_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="Annotation file not found: .*missing.json"):
        _grounding(img_dir, str(tmp_path / "missing.json"))


def test_truncated_annotation_file(tmp_path):
    img_dir, ann_file = _write_dataset(tmp_path)
    text = Path(ann_file).read_text()
    Path(ann_file).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="ann.json is not valid JSON"):
        _grounding(img_dir, ann_file)


def test_unknown_category_id(tmp_path):
    bad = [{"id": 77, "image_id": 1, "category_id": 9, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}]
    img_dir, ann_file = _write_dataset(tmp_path, annotations=bad)
    with pytest.raises(ValueError, match="annotation 77 .*category_id 9"):
        _grounding(img_dir, ann_file)


@pytest.mark.parametrize("bbox, problem", [
    ([2, 2, 10], "3 numbers instead of 4"),
    ([2, 2, 10, "10"], "not all numbers"),
    ([2, 2, float("nan"), 10], "not finite"),
    (None, "missing"),
], ids=["3 numbers", "a string", "NaN", "missing"])
def test_bad_bbox_is_refused_when_the_dataset_loads_naming_file_annotation_image_and_value(tmp_path, bbox, problem):
    good = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
    bad = {"id": 7, "image_id": 2, "category_id": 1, "bbox": bbox, "area": 100, "iscrowd": 0}
    if bbox is None:
        del bad["bbox"]
    img_dir, ann_file = _write_dataset(tmp_path, images=((1, "a.jpg"), (2, "b.jpg")), annotations=[good, bad])
    expected = (f"{ann_file}: annotation 7 (image 2) has bbox {bbox!r}: {problem}. A COCO bbox is [x, y, width, "
                "height], 4 finite numbers; fix or remove this annotation.")
    for load in (lambda: _grounding(img_dir, ann_file),  # training
                 lambda: COCODataset(ann_file, img_dir, remove_images_without_annotations=False)):  # evaluation
        with pytest.raises(ValueError) as raised:
            load()
        assert str(raised.value) == expected


def test_unreadable_and_missing_image(tmp_path):
    img_dir, ann_file = _write_dataset(tmp_path)
    Path(img_dir, "a.jpg").write_bytes(b"not a jpeg at all")
    dataset = _grounding(img_dir, ann_file)
    with pytest.raises(OSError, match="Cannot read image .*a.jpg \\(image id 1\\)"):
        dataset[0]
    os.remove(Path(img_dir, "a.jpg"))
    with pytest.raises(FileNotFoundError, match="Image file not found: .*a.jpg \\(image id 1\\)"):
        dataset[0]


def test_empty_dataset(tmp_path):
    tiny = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 1, 10], "area": 10, "iscrowd": 0}]
    img_dir, ann_file = _write_dataset(tmp_path, annotations=tiny)
    with pytest.raises(ValueError, match="Empty dataset: no image with a box .* in .*ann.json"):
        _grounding(img_dir, ann_file)
    img_dir, ann_file = _write_dataset(tmp_path, images=(), annotations=[])
    with pytest.raises(ValueError, match="Empty dataset"):
        COCODataset(ann_file, img_dir, remove_images_without_annotations=False)


def test_override_category_json_and_caption_prompt_file(data_root, tmp_path):
    cfg = dataset_cfg()
    names = ["lamp", "auto", "rat", "human", "food"]
    cfg.DATASETS.USE_OVERRIDE_CATEGORY = True
    cfg.DATASETS.OVERRIDE_CATEGORY = json.dumps([{"id": i, "name": n} for i, n in zip([12, 3, 27, 8, 20], names)])
    prompt_file = tmp_path / "prompt.yaml"
    prompt_file.write_text("".join(f"- {{prefix: 'a ', name: {n}, suffix: ''}}\n" for n in names))
    cfg.DATASETS.USE_CAPTION_PROMPT = True
    cfg.DATASETS.CAPTION_PROMPT = str(prompt_file)
    _, target, _ = make_data_loader(cfg, is_train=True).dataset[1]
    assert target.get_field("caption") == "a lamp. a auto. a rat. a human. a food"
    assert target.get_field("tokens_positive") == [[[25, 30]], [[10, 14]], [[2, 6]]]


def test_grouped_batches_with_empty_groups_and_padded_repeats():
    """A rank's share may miss a whole aspect-ratio group and may repeat indices (distributed padding)."""
    from torch.utils.data import Sampler

    from maskrcnn_benchmark.data.samplers import GroupedBatchSampler

    class Fixed(Sampler):
        def __init__(self, order):
            self.order = order

        def __iter__(self):
            return iter(self.order)

        def __len__(self):
            return len(self.order)

    assert list(GroupedBatchSampler(Fixed([0, 2]), [0, 1, 0], 1)) == [[0], [2]]
    assert list(GroupedBatchSampler(Fixed([3, 1, 0, 3, 2]), [0, 1, 0, 1], 2)) == [[3, 1], [0, 2], [3]]
