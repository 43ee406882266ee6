"""GLIP-A (no early fusion) and GLIP-L (Swin-L): their official configs build the official modules.

The expected state dicts are derived from the official GLIP-T dump by tests/fixtures/derive_variant_state_dicts.py
(see the headers of tests/fixtures/glip_a_state_dict.tsv and glip_l_state_dict.tsv). The full-size models are
built on the meta device: shapes only, no memory, about a second.
"""
from pathlib import Path

import pytest
import torch
from conftest import SMALL
from helpers import head_cfg, small_cfg
from transformers import BertConfig

from maskrcnn_benchmark.config import check_supported, get_cfg_defaults, key_status, unsupported_settings
from maskrcnn_benchmark.config.paths_catalog import DatasetCatalog
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.modeling.rpn.vldyhead import build_vldyhead
from maskrcnn_benchmark.solver import make_optimizer
from maskrcnn_benchmark.structures.bounding_box import BoxList

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
GLIP_A = ROOT / "configs" / "pretrain" / "glip_A_Swin_T_O365.yaml"
GLIP_L = ROOT / "configs" / "pretrain" / "glip_Swin_L.yaml"
BUFFERS = ("relative_position_index", "cell_anchors")
# The official GLIP-L config's caption-dataset options (the caption sets are not in this port's catalog).
GLIP_L_CAPTION_KEYS = ["DATASETS.FURTHER_SCREEN", "DATASETS.CAPTION_CONF", "DATASETS.CAPTION_NMS",
                       "DATASETS.PACK_RANDOM_CAPTION_NUMBER", "DATASETS.NO_RANDOM_PACK_PROBABILITY",
                       "DATASETS.RANDOM_PACK_PROB", "DATASETS.CAPTION_FORMAT_VERSION"]


def merged(path: Path, opts: list | None = None):
    """The defaults merged with an official config file (and options)."""
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(opts or [])
    return cfg


def expected_rows(name: str) -> list[tuple[str, str, str]]:
    """(key, shape, dtype) rows of a derived listing, without its comment and column-header lines."""
    lines = (FIXTURES / name).read_text().splitlines()
    return [tuple(line.split("\t")) for line in lines if not line.startswith(("#", "key\t"))]


def meta_model_rows(cfg) -> tuple[list[tuple[str, str, str]], int]:
    """The (key, shape, dtype) rows and parameter count of the model `cfg` builds, built on the meta device."""
    with torch.device("meta"):
        model = build_detection_model(cfg)
    rows = [(key, str(list(value.shape)), str(value.dtype)) for key, value in model.state_dict().items()]
    return rows, sum(p.numel() for p in model.parameters())


def listed_parameters(rows: list[tuple[str, str, str]]) -> int:
    """Number of parameter elements of a listing (its buffers left out)."""
    shapes = [shape for key, shape, _ in rows if not any(f".{buffer}" in key for buffer in BUFFERS)]
    return sum(torch.Size([int(d) for d in shape.strip("[]").split(",") if d.strip()]).numel() for shape in shapes)


def test_glip_a_state_dict_matches_the_official_modules():
    cfg = merged(GLIP_A)
    assert cfg.MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON is False
    rows, parameters = meta_model_rows(cfg)
    expected = expected_rows("glip_a_state_dict.tsv")
    assert rows == expected
    assert parameters == listed_parameters(expected) == 151_430_526
    assert not any(".b_attn." in key or ".attention." in key for key, _, _ in rows if "dyhead_tower" in key)


def test_glip_l_official_config_builds_the_official_modules():
    cfg = merged(GLIP_L)
    assert (cfg.MODEL.SWINT.EMBED_DIM, cfg.MODEL.SWINT.DEPTHS, cfg.MODEL.SWINT.NUM_HEADS,
            cfg.MODEL.SWINT.WINDOW_SIZE, cfg.MODEL.DYHEAD.NUM_CONVS) == (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 8)
    rows, parameters = meta_model_rows(cfg)
    expected = expected_rows("glip_l_state_dict.tsv")
    assert rows == expected
    assert parameters == listed_parameters(expected) == 430_422_384
    assert f"{parameters / 1e6:.1f}" == "430.4"


def test_glip_l_caption_keys_have_no_effect_and_what_could_change_a_run_is_refused():
    cfg = merged(GLIP_L)
    assert cfg.DATASETS.FURTHER_SCREEN is True and cfg.DATASETS.CAPTION_FORMAT_VERSION == "v2"
    for key in GLIP_L_CAPTION_KEYS:
        assert key_status(key).startswith("no effect: read only by the official caption datasets"), key
    # Everything else of the config is built, the weight-decay schedule included (tests/test_solver.py).
    assert unsupported_settings(cfg) == [] and cfg.SOLVER.WEIGHT_DECAY_SCHEDULE is True
    make_optimizer(cfg, torch.nn.Linear(2, 2))
    # The chunk-by-node sampler replaces the sampler of every set, caption or not: refused.
    cfg.merge_from_list(["DATALOADER.DISTRIBUTE_CHUNK_AMONG_NODE", "True"])
    with pytest.raises(ValueError, match=r"DATALOADER\.DISTRIBUTE_CHUNK_AMONG_NODE = True configures the "
                                         r"chunk-by-node sampler"):
        check_supported(cfg, ["DATALOADER"])
    # A caption set itself is not in the catalog, so the caption keys cannot reach a run.
    with pytest.raises(Exception, match="bing_caption_train"):
        DatasetCatalog.get("bing_caption_train")


def test_fused_language_off_with_early_fusion_is_refused():
    cfg = merged(ROOT / "configs" / "pretrain" / "glip_Swin_T_O365.yaml",
                 ["MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT", "False"])
    with pytest.raises(ValueError, match=r"USE_FUSED_FEATURES_DOT_PRODUCT = False is not built by this port; "
                                         r"supported: True, or False with .*EARLY_FUSE_ON False \(GLIP-A\)"):
        build_detection_model(cfg)


def glip_a_head():
    """The small golden head without early fusion (GLIP-A), in eval mode."""
    cfg = head_cfg()
    cfg.MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON = False
    cfg.MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT = False
    torch.manual_seed(0)
    return build_vldyhead(cfg, BertConfig.from_pretrained(SMALL / "bert")).eval()


def test_glip_a_head_reads_language_only_through_the_backbone_embedding():
    # Officially the GLIP-A tower passes the language features through unchanged and the token logits read the
    # backbone's masked features ("embedded"), so "hidden" changes nothing and the boxes never see the text.
    head = glip_a_head()
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(1, 64, size, size, generator=generator) for size in (8, 4, 2, 1, 1)]
    masks = torch.tensor([[1] * 5 + [0] * 3])
    embedded, other = (torch.randn(1, 8, 64, generator=generator) for _ in range(2))
    with torch.no_grad():
        first = head(features, {"hidden": torch.randn(1, 8, 64), "embedded": embedded, "masks": masks})
        other_hidden = head(features, {"hidden": torch.randn(1, 8, 64), "embedded": embedded, "masks": masks})
        other_embedded = head(features, {"hidden": torch.randn(1, 8, 64), "embedded": other, "masks": masks})
    for got, same in zip(first[:3], other_hidden[:3]):
        torch.testing.assert_close(got, same, rtol=0, atol=0)
    torch.testing.assert_close(first.box_regression, other_embedded.box_regression, rtol=0, atol=0)
    assert not torch.equal(first.dot_product_logits[0], other_embedded.dot_product_logits[0])


def test_glip_a_small_model_trains_and_detects_on_a_64px_image():
    cfg = small_cfg().clone()
    cfg.defrost()
    cfg.MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON = False
    cfg.MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT = False
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    assert not any("b_attn" in key for key in model.state_dict())
    image = torch.rand(1, 3, 64, 64) * 255
    target = BoxList(torch.tensor([[8.0, 10.0, 40.0, 50.0]]), (64, 64), mode="xyxy")
    target.add_field("labels", torch.tensor([1]))
    positive_map = torch.zeros(1, 256)
    positive_map[0, 2] = 1.0  # "cat" in "[CLS] a cat . a dog ."
    model.train()
    losses = model(image, targets=[target], captions=["a cat. a dog."], positive_map=positive_map)
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    tower_grad = model.rpn.head.dyhead_tower[0].offset.weight.grad
    word_grad = model.language_backbone.body.model.embeddings.word_embeddings.weight.grad
    assert tower_grad is not None and tower_grad.abs().sum() > 0
    assert word_grad is not None and word_grad.abs().sum() > 0  # the text reaches the loss through "embedded"
    model.eval()
    with torch.no_grad():
        detections = model(image, captions=["a cat. a dog."], positive_map={1: [2], 2: [5]})
    assert len(detections) == 1 and detections[0].bbox.shape[1] == 4
    assert torch.isfinite(detections[0].get_field("scores")).all()
