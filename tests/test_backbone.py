"""Swin-T + FPN backbone (SWINT-FPN-RETINANET) against the official golden data and official behaviours."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import small_raw_cfg
from yacs.config import CfgNode

from maskrcnn_benchmark.config import check_supported
from maskrcnn_benchmark.layers.dropblock import DropBlock2D
from maskrcnn_benchmark.modeling.backbone import build_backbone

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PREFIX = "backbone."


def backbone_state(state_dict: dict) -> dict:
    """The `backbone.` entries of a full-model state dict, with the prefix stripped."""
    return {k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)}


def small_backbone(small_state_dict: dict, **overrides) -> torch.nn.Module:
    """The small golden model's backbone with its golden weights (cfg overrides given as 'A.B.C': value)."""
    cfg = small_raw_cfg()
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for name in parents:
            node = getattr(node, name)
        setattr(node, leaf, value)
    backbone = build_backbone(cfg)
    backbone.load_state_dict(backbone_state(small_state_dict), strict=True)
    return backbone


def test_small_backbone_matches_golden_intermediates(small_case, small_state_dict):
    backbone = small_backbone(small_state_dict).eval()
    images = small_case["inputs"]["image_list_tensors"]
    expected = small_case["eval"]["intermediates"]
    with torch.no_grad():
        stages = backbone.body(images)
        pyramid = backbone.fpn(stages)
        end_to_end = backbone(images)
    assert len(stages) == 4 and len(pyramid) == 5
    for got, want in zip(stages[1:], expected["swin_outputs"][1:]):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    for got, want in zip(pyramid, expected["fpn_outputs"]):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    for got, want in zip(end_to_end, pyramid):
        assert torch.equal(got, want)
    assert backbone.out_channels == 64


def test_seeded_init_reproduces_official_init(small_state_dict):
    # The golden model was built right after torch.manual_seed(20240601), backbone first: the same construction
    # order and init scheme must give the same weights.
    torch.manual_seed(20240601)
    built = build_backbone(small_raw_cfg()).state_dict()
    golden = backbone_state(small_state_dict)
    assert list(built) == list(golden)
    for key, value in built.items():
        if key.endswith("relative_position_bias_table"):
            # Same random draws; erfinv rounds differently across CPU instruction sets (~1e-9).
            torch.testing.assert_close(value, golden[key], atol=1e-8, rtol=0)
        else:
            assert torch.equal(value, golden[key]), key


def test_glip_t_state_dict_keys_and_shapes():
    with open(FIXTURES / "config_glip_t_merged.yaml") as f:
        cfg = CfgNode.load_cfg(f)
    rows = (FIXTURES / "glip_t_state_dict.tsv").read_text().splitlines()[1:]
    expected = [row.split("\t") for row in rows if row.startswith(PREFIX)]
    built = build_backbone(cfg).state_dict()
    got = [[PREFIX + key, str(list(value.shape)), str(value.dtype)] for key, value in built.items()]
    assert got == expected
    assert len(got) == 203


def test_unsupported_conv_body_is_rejected():
    cfg = small_raw_cfg()
    check_supported(cfg)
    cfg.MODEL.BACKBONE.CONV_BODY = "R-50-FPN-RETINANET"
    # build_backbone only maps keys; the one table (config.compat) refuses the backbones not built.
    with pytest.raises(ValueError, match="CONV_BODY = 'R-50-FPN-RETINANET'.*supported: 'SWINT-FPN-RETINANET'"):
        check_supported(cfg)


def test_odd_input_sizes(small_state_dict):
    backbone = small_backbone(small_state_dict).eval()
    images = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pyramid = backbone(images)
        stages = backbone.body(images)
        # The patch embedding zero-pads to a multiple of 4: the same as feeding the zero-padded image.
        padded = backbone(F.pad(images, (0, 1, 0, 3)))
    # Tokens 25x33; PatchMerging pads odd sizes (ceil halving); P6/P7 are stride-2 convs with padding 1.
    assert [tuple(s.shape[-2:]) for s in stages] == [(25, 33), (13, 17), (7, 9), (4, 5)]
    assert [tuple(p.shape) for p in pyramid] == [(2, 64, 13, 17), (2, 64, 7, 9), (2, 64, 4, 5), (2, 64, 2, 3),
                                                 (2, 64, 1, 2)]
    assert all(torch.isfinite(p).all() for p in pyramid)
    for got, want in zip(pyramid, padded):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_inference_chunks_equal_whole_computation(small_state_dict, monkeypatch):
    """Inference attends in chunks of windows and runs the MLP in chunks of tokens; with chunks small enough to
    split every stage (a partial chunk last, shifted-window masks, a batch of 2), the stages equal the
    unchunked computation (what autograd-enabled calls run)."""
    from maskrcnn_benchmark.modeling.backbone import swint

    backbone = small_backbone(small_state_dict).eval()
    images = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(1))
    whole = [stage.detach() for stage in backbone.body(images)]
    monkeypatch.setattr(swint, "WINDOW_CHUNK", 3)
    monkeypatch.setattr(swint, "MLP_CHUNK", 50)
    with torch.no_grad():
        chunked = backbone.body(images)
    for got, want in zip(chunked, whole):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_dropblock_module_only_in_training():
    block = DropBlock2D(0.3, 3)
    x = torch.ones(2, 4, 16, 16)
    assert block.eval()(x) is x
    torch.manual_seed(0)
    out = block.train()(x)
    dropped = out == 0
    assert dropped.any() and not dropped.all()
    # One mask for all channels; kept values rescaled so that the batch mean is preserved.
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    kept = out[~dropped]
    torch.testing.assert_close(kept, torch.full_like(kept, kept[0].item()))
    torch.testing.assert_close(out.mean(), torch.tensor(1.0))
    assert DropBlock2D(0.0, 3).train()(x) is x


def test_fpn_dropblock_on_p3_p4_in_training_only(small_case, small_state_dict):
    images = small_case["inputs"]["image_list_tensors"]
    with_block = small_backbone(small_state_dict, **{"MODEL.FPN.DROP_BLOCK": True})
    without = small_backbone(small_state_dict)
    assert isinstance(with_block.fpn.drop_block, DropBlock2D)
    assert (with_block.fpn.drop_block.drop_prob, with_block.fpn.drop_block.block_size) == (0.3, 3)
    with torch.no_grad():
        evaluated = with_block.eval()(images)
        reference = without.eval()(images)
        for got, want in zip(evaluated, reference):
            assert torch.equal(got, want)
        # The small model has no drop path, so the Swin body is deterministic in training too.
        torch.manual_seed(0)
        trained = with_block.train()(images)
        untouched = without.train()(images)
    assert not torch.allclose(trained[0], untouched[0]) and not torch.allclose(trained[1], untouched[1])
    for got, want in zip(trained[2:], untouched[2:]):
        assert torch.equal(got, want)


def test_frozen_stages_and_checkpointing_follow_official_cfg():
    cfg = small_raw_cfg()
    cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 2
    cfg.MODEL.BACKBONE.USE_CHECKPOINT = True
    body = build_backbone(cfg).train().body
    frozen = [name for name, p in body.named_parameters() if not p.requires_grad]
    assert frozen and all(name.startswith(("patch_embed.", "layers.0.")) for name in frozen)
    assert len(frozen) == len(list(body.patch_embed.parameters())) + len(list(body.layers[0].parameters()))
    assert not body.patch_embed.training and not body.layers[0].training and body.layers[1].training
    # Checkpointing is skipped for the stages up to FREEZE_CONV_BODY_AT, as officially.
    assert [layer.use_checkpoint for layer in body.layers] == [False, False, True, True]


def test_checkpointing_keeps_values_and_gradients(small_state_dict):
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    grads = []
    for use_checkpoint in (False, True):
        backbone = small_backbone(small_state_dict, **{"MODEL.BACKBONE.USE_CHECKPOINT": use_checkpoint,
                                                       "MODEL.SWINT.DROP_PATH_RATE": 0.3}).train()
        torch.manual_seed(1)
        loss = sum(p.square().mean() for p in backbone(images))
        loss.backward()
        grads.append({name: p.grad for name, p in backbone.named_parameters()})
    assert all(g is not None for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_drop_path_rates_grow_linearly():
    cfg = small_raw_cfg()
    cfg.MODEL.SWINT.DROP_PATH_RATE = 0.2
    body = build_backbone(cfg).body
    blocks = [block for layer in body.layers for block in layer.blocks]
    assert isinstance(blocks[0].drop_path, torch.nn.Identity)
    rates = [block.drop_path.p for block in blocks[1:]]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.2, len(blocks))[1:])
