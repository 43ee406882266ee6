"""Detector-level behaviour: official checkpoints load unchanged, freezing, prompt tuning, refused features."""
import pytest
import torch
from helpers import assert_same_detections, eval_forward, small_cfg

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.utils.checkpoint import DetectronCheckpointer


def _cfg_with(*overrides):
    cfg = small_cfg().clone()
    cfg.defrost()
    cfg.merge_from_list(list(overrides))
    return cfg


def test_official_checkpoint_layout_loads_and_reproduces_predictions(tmp_path, small_state_dict, small_case):
    state = {"module." + k: v for k, v in small_state_dict.items()}
    state["module.language_backbone.body.model.embeddings.position_ids"] = torch.arange(512)[None]
    path = tmp_path / "glip_small.pth"
    torch.save({"model": state, "optimizer": {}, "iteration": 3}, path)
    cfg = small_cfg()
    model = build_detection_model(cfg)
    DetectronCheckpointer(cfg, model).load(str(path))
    for got, expected in zip(eval_forward(model, small_case), small_case["eval"]["predictions"]):
        assert_same_detections(got, expected)


def test_mode_switches_return_the_model_and_keep_cls_logits_frozen():
    model = build_detection_model(small_cfg())
    assert model.train() is model and model.eval() is model
    model.train()
    assert not model.rpn.head.cls_logits.training
    assert all(not p.requires_grad for p in model.rpn.head.cls_logits.parameters())


def test_frozen_language_backbone_and_linear_probing():
    model = build_detection_model(_cfg_with("MODEL.LANGUAGE_BACKBONE.FREEZE", True)).train()
    assert not any(p.requires_grad for p in model.language_backbone.parameters())
    assert not model.language_backbone.training
    probe = build_detection_model(_cfg_with("MODEL.BACKBONE.FREEZE", True, "MODEL.FPN.FREEZE", True,
                                            "MODEL.LINEAR_PROB", True)).train()
    # As officially, linear probing freezes the vision side and the head's tower; the language backbone follows
    # its own FREEZE switch.
    trainable = sorted(n for n, p in probe.named_parameters()
                       if p.requires_grad and not n.startswith("language_backbone."))
    assert trainable and all(n.startswith("rpn.head.") and "dyhead_tower" not in n for n in trainable)
    assert "rpn.head.bbox_pred.weight" in trainable and "rpn.head.bias0" in trainable


def test_prompt_tuning_layer_is_zero_initialised_and_trainable(small_state_dict, small_case):
    model = build_detection_model(_cfg_with("MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER", True,
                                            "MODEL.BACKBONE.FREEZE", True, "MODEL.RPN.FREEZE", True))
    assert model.state_dict()["rpn.tunable_linear.weight"].shape == (1000, 64)
    model.load_state_dict(small_state_dict, strict=False)
    model.train()
    assert model.rpn.tunable_linear.weight.requires_grad
    # A zero offset leaves the predictions unchanged.
    for got, expected in zip(eval_forward(model, small_case), small_case["eval"]["predictions"]):
        assert_same_detections(got, expected)


@pytest.mark.parametrize("key,value,feature", [
    ("MODEL.MASK_ON", True, "mask"),
    ("MODEL.RPN_ARCHITECTURE", "RETINANET", "RPN_ARCHITECTURE"),
])
def test_unbuilt_features_are_refused(key, value, feature):
    with pytest.raises(ValueError, match=f"(?i){feature}"):
        build_detection_model(_cfg_with(key, value))


def test_lang_dim_must_match_language_model():
    cfg = get_cfg_defaults()
    cfg.merge_from_file("configs/pretrain/glip_Swin_T_O365_GoldG.yaml")
    cfg.MODEL.LANGUAGE_BACKBONE.LANG_DIM = 512
    with pytest.raises(ValueError, match="LANG_DIM=512"):
        build_detection_model(cfg)


def test_a_list_of_positive_maps_is_refused_in_training():
    model = build_detection_model(small_cfg()).train()
    image = torch.zeros(3, 64, 64)
    with pytest.raises(ValueError, match="A list of positive maps .* is for eval only"):
        model([image], targets=[], captions=["person . "], positive_map=[{1: [1]}])
