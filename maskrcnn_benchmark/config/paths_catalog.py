"""Catalog of the COCO-format datasets known by name, and the search for their files on disk."""
import os
from collections.abc import Mapping, Sequence

# Folders searched, in order, for a relative dataset path (after "./" and the DATASET environment variable).
DEFAULT_SEARCH_PATH = ("./DATASET", "./OUTPUT", "./data", "./MODEL")


def search_folders(search_path: Sequence[str] = DEFAULT_SEARCH_PATH) -> list:
    """The folders `try_to_find` looks in: ./, then $DATASET when set, then `search_path`."""
    folders = ["./"]
    if "DATASET" in os.environ:
        folders.append(os.environ["DATASET"])
    return folders + list(search_path)


def try_to_find(file: str, return_dir: bool = False, search_path: Sequence[str] = DEFAULT_SEARCH_PATH) -> str:
    """Path of `file` (or the folder holding it when `return_dir`) in the first search folder where it exists.

    Absolute paths and "catalog://" names are returned as they are (an absolute path must exist).
    """
    if not file or file.startswith("catalog://"):
        return file
    folders = search_folders(search_path)
    for folder in folders:
        if os.path.exists(os.path.join(folder, file)):
            return folder if return_dir else os.path.join(folder, file)
    raise FileNotFoundError(
        f"Cannot find {file!r} in any of {folders}. Set the DATASET environment variable to the folder that "
        "holds it (see DATA.md), or register the dataset with absolute paths in DATASETS.REGISTER."
    )


class DatasetCatalog:
    """Official dataset names (COCO-format ones) -> image folder and annotation file, relative to the data root.

    Names containing "_grounding" build the training dataset that turns detection boxes into grounding targets
    (`CocoGrounding`); names containing "lvis_evaluation" the LVIS evaluation set (`LvisDetection`), names
    containing "flickr" the Flickr30k grounding evaluation set (`FlickrDataset`), as in GLIP; other names build
    the detection dataset used for evaluation (`COCODataset`).
    """

    DATASETS: dict[str, dict[str, str]] = {
        "coco_grounding_train": {
            "img_dir": "coco/train2017",
            "ann_file": "coco/annotations/instances_train2017.json",
        },
        "coco_2017_train": {"img_dir": "coco/train2017", "ann_file": "coco/annotations/instances_train2017.json"},
        "coco_2017_val": {"img_dir": "coco/val2017", "ann_file": "coco/annotations/instances_val2017.json"},
        "coco_2017_test": {"img_dir": "coco/test2017", "ann_file": "coco/annotations/image_info_test-dev2017.json"},
        "coco_2014_train": {"img_dir": "coco/train2014", "ann_file": "coco/annotations/instances_train2014.json"},
        "coco_2014_val": {"img_dir": "coco/val2014", "ann_file": "coco/annotations/instances_val2014.json"},
        "coco_2014_minival": {
            "img_dir": "coco/val2014",
            "ann_file": "coco/annotations/instances_minival2014.json",
        },
        # Flickr30k phrase grounding (evaluation only): MDETR's annotations give the images and captions, the
        # Flickr30k Entities folder (Annotations/, Sentences/, val.txt, test.txt) the boxes the recall is rated on.
        "flickr30k_val": {
            "img_dir": "flickr30k/flickr30k_images/val",
            "ann_file": "mdetr_annotations/final_flickr_separateGT_val.json",
            "entities_dir": "flickr30k/flickr30k",
        },
        "flickr30k_test": {
            "img_dir": "flickr30k/flickr30k_images/test",
            "ann_file": "mdetr_annotations/final_flickr_separateGT_test.json",
            "entities_dir": "flickr30k/flickr30k",
        },
    }

    @staticmethod
    def set(name: str, info: Mapping[str, str]) -> None:
        """Add or replace a catalog entry (process-wide; `get(..., registered=)` avoids the global change)."""
        DatasetCatalog.DATASETS.update({name: dict(info)})

    @staticmethod
    def get(name: str, registered: Mapping[str, Mapping[str, str]] | None = None) -> dict:
        """{"factory": dataset class name, "args": {...}} for a catalog name or a name in `registered`."""
        registered = registered or {}
        attrs = registered.get(name) or DatasetCatalog.DATASETS.get(name)
        if attrs is None:
            known = sorted(set(DatasetCatalog.DATASETS) | set(registered))
            raise KeyError(
                f"Dataset not available: {name!r}. Known names: {known}. Any COCO-format folder can be added "
                "with DATASETS.REGISTER (name: {img_dir, ann_file}), see DATA.md."
            )
        missing = {"img_dir", "ann_file"} - set(attrs)
        if missing:
            raise ValueError(f"Dataset {name!r} needs the entries {sorted(missing)} (got {dict(attrs)}).")
        if "synthetic_root" in attrs:
            ensure_synthetic_dataset(attrs)
        img_dir = try_to_find(attrs["img_dir"])
        ann_file = try_to_find(attrs["ann_file"])
        if "_grounding" in name:
            return {"factory": "CocoGrounding", "args": {"img_folder": img_dir, "ann_file": ann_file}}
        if "lvis_evaluation" in name:
            return {"factory": "LvisDetection", "args": {"root": img_dir, "ann_file": ann_file}}
        if "flickr" in name:
            return {"factory": "FlickrDataset", "args": _flickr_args(name, attrs, img_dir, ann_file)}
        return {"factory": "COCODataset", "args": {"root": img_dir, "ann_file": ann_file}}


def _flickr_args(name: str, attrs: Mapping[str, str], img_dir: str, ann_file: str) -> dict:
    """FlickrDataset arguments: the Flickr30k Entities folder and split ("test" when the name says so, as GLIP)."""
    if "entities_dir" not in attrs:
        raise ValueError(f"Dataset {name!r} needs an 'entities_dir' entry: the Flickr30k Entities folder (with "
                         f"Annotations/, Sentences/ and val.txt/test.txt) that the recall evaluation reads "
                         f"(got {dict(attrs)}).")
    return {"img_folder": img_dir, "ann_file": ann_file, "entities_dir": try_to_find(attrs["entities_dir"]),
            "subset": "test" if "test" in name else "val"}


def ensure_synthetic_dataset(attrs: Mapping[str, object]) -> None:
    """Write the synthetic dataset of a REGISTER entry (`synthetic_root`, `synthetic_seed`) when it is absent."""
    try:
        try_to_find(str(attrs["ann_file"]))
        return
    except FileNotFoundError:
        pass
    from maskrcnn_benchmark.data.datasets.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(str(attrs["synthetic_root"]), seed=int(attrs.get("synthetic_seed", 0)))
