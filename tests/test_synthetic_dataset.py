"""The synthetic grounding dataset: reproducible bytes, real COCO format, names BERT knows as words."""
import hashlib
import json
from pathlib import Path

from pycocotools.coco import COCO

from maskrcnn_benchmark.data.datasets.synthetic import CATEGORIES, generate_synthetic_dataset
from maskrcnn_benchmark.text import load_shipped_tokenizer


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = generate_synthetic_dataset(str(tmp_path / "a"), seed=0, num_train=6, num_val=3)
    b = generate_synthetic_dataset(str(tmp_path / "b"), seed=0, num_train=6, num_val=3)
    c = generate_synthetic_dataset(str(tmp_path / "c"), seed=1, num_train=6, num_val=3)
    assert _digests(a) == _digests(b)
    da, dc = _digests(a), _digests(c)
    assert set(da) == set(dc)
    assert all(da[name] != dc[name] for name in da if name.endswith(".jpg"))


def test_annotations_are_valid_coco(tmp_path):
    root = generate_synthetic_dataset(str(tmp_path / "s"), seed=3, num_train=10, num_val=4)
    coco = COCO(str(root / "annotations" / "train.json"))
    assert sorted(coco.getCatIds()) == sorted(c[0] for c in CATEGORIES)
    assert len(coco.getImgIds()) == 10
    for ann in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = ann["bbox"]
        image = coco.loadImgs(ann["image_id"])[0]
        assert w >= 4 and h >= 4 and x >= 0 and y >= 0
        assert x + w <= image["width"] and y + h <= image["height"]
        assert (root / "train" / image["file_name"]).is_file()
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert max(counts) > 1  # several objects per image


def test_category_names_are_vocabulary_words():
    tokenizer = load_shipped_tokenizer()
    for _, name, _, _ in CATEGORIES:
        words = name.split()
        assert tokenizer.tokenize(name) == words, name
    assert json.dumps([c[1] for c in CATEGORIES])
