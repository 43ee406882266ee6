"""VLDyHead (fusion tower + heads) against the official golden outputs, and the deformable-conv quirk."""
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, SMALL
from helpers import HEAD_PREFIX, head_cfg, head_inputs, small_head
from transformers import BertConfig

from maskrcnn_benchmark.config import check_supported
from maskrcnn_benchmark.layers.deform_conv import modulated_deform_conv
from maskrcnn_benchmark.modeling.rpn.vldyhead import DyConv, VLFuse, build_vldyhead

TOL = dict(atol=1e-4, rtol=1e-4)
GLIP_T_BERT = Path(__file__).resolve().parents[1] / "maskrcnn_benchmark/text/bert-base-uncased"


@pytest.fixture(scope="module")
def golden_run(small_case, small_state_dict):
    """One eval forward of the small head, with every tower module's output recorded."""
    head = small_head(small_state_dict).eval()
    recorded = {"tower": [], "proj_tokens": []}
    for module in head.dyhead_tower:
        module.register_forward_hook(lambda m, args, out: recorded["tower"].append(out))
    head.dot_product_projection_text.register_forward_hook(
        lambda m, args, out: recorded["proj_tokens"].append(out))
    features, language = head_inputs(small_case)
    with torch.no_grad():
        output = head(features, language)
    return head, output, recorded, language


def test_tower_intermediates_match_golden(small_case, golden_run):
    _, _, recorded, _ = golden_run
    expected = small_case["eval"]["intermediates"]["dyhead_tower"]
    assert len(recorded["tower"]) == len(expected) == 6
    for got, ref in zip(recorded["tower"], expected):
        if ref["type"] == "VLFuse":
            visual, lang_hidden = got
            torch.testing.assert_close(lang_hidden, ref["lang_hidden"], **TOL)
        elif ref["type"] == "BertEncoderLayer":
            visual, lang_hidden = None, got
            torch.testing.assert_close(lang_hidden, ref["lang_hidden"], **TOL)
        else:
            assert ref["type"] == "DyConv"
            visual = got
        if visual is not None:
            assert len(visual) == len(ref["visual"]) == 5
            for level, (v, v_ref) in enumerate(zip(visual, ref["visual"])):
                torch.testing.assert_close(v, v_ref, **TOL, msg=lambda m: f"{ref['type']} level {level}: {m}")


def test_head_outputs_match_golden(small_case, golden_run):
    _, output, recorded, _ = golden_run
    intermediates = small_case["eval"]["intermediates"]
    torch.testing.assert_close(recorded["proj_tokens"][0], intermediates["dot_product_proj_tokens"], **TOL)
    expected = small_case["eval"]["head_outputs"]
    for name in ("box_regression", "centerness", "dot_product_logits"):
        got = getattr(output, name)
        assert len(got) == len(expected[name]) == 5
        for level, (g, e) in enumerate(zip(got, expected[name])):
            torch.testing.assert_close(g, e, **TOL, msg=lambda m: f"{name} level {level}: {m}")
    # The fused language features are the last BertEncoderLayer's output.
    torch.testing.assert_close(
        output.fused_language["hidden"], intermediates["dyhead_tower"][4]["lang_hidden"], **TOL)


def test_forward_leaves_language_input_untouched(small_case, golden_run):
    _, output, _, language = golden_run
    golden_language = small_case["eval"]["intermediates"]["language_backbone"]
    assert language["hidden"] is golden_language["hidden"]
    assert set(output.fused_language) == set(golden_language)
    assert output.fused_language["masks"] is golden_language["masks"]


def test_two_eval_forwards_are_identical(small_case, golden_run):
    head, first, _, _ = golden_run
    features, language = head_inputs(small_case)
    with torch.no_grad():
        second = head(features, language)
    for name in ("box_regression", "centerness", "dot_product_logits"):
        for a, b in zip(getattr(first, name), getattr(second, name)):
            assert torch.equal(a, b)
    assert torch.equal(first.fused_language["hidden"], second.fused_language["hidden"])


def _fusion_step(fuse: VLFuse, case: dict, seed: int) -> tuple[list[torch.Tensor], dict]:
    fuse.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    features, language = head_inputs(case)
    features = [f.clone().requires_grad_(True) for f in features]
    hidden = language["hidden"].clone().requires_grad_(True)
    visual, lang = fuse(features, hidden, language["masks"])
    loss = sum(v.square().mean() for v in visual) + lang.square().mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in fuse.named_parameters()}
    grads["features"] = torch.cat([f.grad.flatten() for f in features])
    grads["hidden"] = hidden.grad
    return visual + [lang], grads


@pytest.mark.slow
def test_train_mode_dropout_and_checkpointing(small_case, small_state_dict):
    """Fusion dropout is ATTN_DROPOUT; checkpointing the fusion changes neither values nor gradients."""
    eval_logits = small_case["eval"]["head_outputs"]["dot_product_logits"]
    no_dropout = small_head(small_state_dict, attn_dropout=0.0).train()
    with torch.no_grad():
        logits = no_dropout(*head_inputs(small_case)).dot_product_logits
    # The small BERT config has zero dropout, so the fusion dropout is the only train/eval difference.
    for got, ref in zip(logits, eval_logits):
        torch.testing.assert_close(got, ref, **TOL)

    head = small_head(small_state_dict, attn_dropout=0.1, use_checkpoint=True).train()
    checkpointed = head.dyhead_tower[0]
    assert checkpointed.use_checkpoint and checkpointed.b_attn.attn.dropout == 0.1
    plain = VLFuse(checkpointed.b_attn, use_checkpoint=False)
    out_plain, grads_plain = _fusion_step(plain, small_case, seed=1)
    out_ckpt, grads_ckpt = _fusion_step(checkpointed, small_case, seed=1)
    features, language = head_inputs(small_case)
    with torch.no_grad():
        eval_visual, _ = plain.eval()(features, language["hidden"], language["masks"])
    assert not torch.allclose(out_plain[0].detach(), eval_visual[0], **TOL)  # dropout is active
    for a, b in zip(out_plain, out_ckpt):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], atol=1e-8, rtol=1e-6, msg=name)


def test_glip_t_state_dict_layout():
    """With the GLIP-T config the head's state-dict keys, order and shapes are the official ones."""
    from yacs.config import CfgNode

    with open(FIXTURES / "config_glip_t_merged.yaml") as f:
        cfg = CfgNode.load_cfg(f)
    fuse = cfg.MODEL.DYHEAD.FUSE_CONFIG
    fuse.ATTN_DROPOUT, fuse.ATTN_EMBED_DIM, fuse.ATTN_NUM_HEADS = 0.1, 2048, 8
    with torch.device("meta"):
        head = build_vldyhead(cfg, BertConfig.from_pretrained(GLIP_T_BERT))
    expected = []
    for line in (FIXTURES / "glip_t_state_dict.tsv").read_text().splitlines()[1:]:
        key, shape, _ = line.split("\t")
        if key.startswith(HEAD_PREFIX):
            expected.append((key[len(HEAD_PREFIX):], shape.replace(" ", "")))
    got = [(k, str(list(v.shape)).replace(" ", "")) for k, v in head.state_dict().items()]
    assert got == expected


def test_official_init_values():
    head = build_vldyhead(head_cfg(), BertConfig.from_pretrained(SMALL / "bert"))
    bias_value = -math.log((1 - 0.01) / 0.01)
    assert head.log_scale.item() == 0.0
    torch.testing.assert_close(head.bias0, torch.tensor([bias_value]))
    torch.testing.assert_close(head.cls_logits.bias, torch.full((80,), bias_value))
    assert not head.cls_logits.weight.requires_grad
    assert torch.equal(head.bias_lang, torch.zeros(64))
    assert torch.equal(head.bbox_pred.bias, torch.zeros(4))
    assert head.bbox_pred.weight.std().item() < 0.02
    b_attn = head.dyhead_tower[0].b_attn
    assert torch.equal(b_attn.gamma_v, torch.full((64,), 0.5))  # 1 / NUM_CONVS
    assert torch.equal(b_attn.attn.v_proj.bias, torch.zeros(2048))
    assert all(s.scale.item() == 1.0 for s in head.scales)


@pytest.mark.parametrize("path, value", [
    ("MODEL.DYHEAD.FUSE_CONFIG.TYPE", "MHA-S"),
    ("MODEL.DYHEAD.FUSE_CONFIG.USE_CONTRASTIVE_ALIGN_LOSS", True),
    ("MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS", True),
    ("MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS", True),
    ("MODEL.DYHEAD.USE_DFCONV", False),
])
def test_unsupported_options_raise(path, value):
    # The head builder only maps keys; the one table (config.compat) refuses the unbuilt variants, naming the
    # key, the value and what is built.
    cfg = head_cfg()
    check_supported(cfg)
    node = cfg
    *parents, leaf = path.split(".")
    for name in parents:
        node = getattr(node, name)
    setattr(node, leaf, value)
    with pytest.raises(ValueError, match=re.escape(f"{path} = {value!r} ") + r".*(supported: |its default )"):
        check_supported(cfg)


def test_use_layer_scale_leaves_the_mha_b_fusion_unchanged():
    # Officially only the MHA-S fusion reads FUSE_CONFIG.USE_LAYER_SCALE; the MHA-B block always scales its
    # residuals by gamma_v/gamma_l. config.compat lists the key as accepted without effect, for that reason.
    states = {}
    for use_layer_scale in (True, False):
        cfg = head_cfg()
        cfg.MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE = use_layer_scale
        check_supported(cfg)
        torch.manual_seed(0)
        states[use_layer_scale] = build_vldyhead(cfg, BertConfig.from_pretrained(SMALL / "bert")).state_dict()
    assert "dyhead_tower.0.b_attn.gamma_v" in states[False] and "dyhead_tower.0.b_attn.gamma_l" in states[False]
    assert states[True].keys() == states[False].keys()
    assert all(torch.equal(states[True][name], states[False][name]) for name in states[True])


# ---- modulated deformable conv ------------------------------------------------------------------

def _bilinear(image: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """CUDA-kernel bilinear sampling of a (C, H, W) image: zero outside (-1, H) x (-1, W), zero-padded corners."""
    _, height, width = image.shape
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return out
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    for yy, xx, w in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                      (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy < height and 0 <= xx < width:
            out += w * image[:, yy, xx]
    return out


def reference_modulated_deform_conv(image, offset_buffers, mask_buffers, weight, bias, stride, padding):
    """Direct float64 DCNv2, reading each sample's offsets/masks from its flat buffer as the CUDA kernel does."""
    batch, _, height, width = image.shape
    c_out, _, kh, kw = weight.shape
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    out = bias.view(1, -1, 1, 1).repeat(batch, 1, out_h, out_w)
    plane = out_h * out_w
    for b in range(batch):
        offsets, masks = offset_buffers[b].reshape(-1), mask_buffers[b].reshape(-1)
        for oy in range(out_h):
            for ox in range(out_w):
                pos = oy * out_w + ox
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        dy, dx = offsets[2 * k * plane + pos].item(), offsets[(2 * k + 1) * plane + pos].item()
                        y = oy * stride - padding + i + dy
                        x = ox * stride - padding + j + dx
                        sample = _bilinear(image[b], y, x) * masks[k * plane + pos]
                        out[b, :, oy, ox] += weight[:, :, i, j] @ sample
    return out


def test_dyconv_cross_level_offset_quirk():
    """Every deform conv in DyConv matches the reference, incl. DyConv[0] on the coarser level fed the
    finer level's offsets (read as a flat per-sample buffer)."""
    torch.manual_seed(0)
    dyconv = DyConv(4, 4, num_groups=2).double()
    with torch.no_grad():
        dyconv.offset.weight.mul_(8.0)  # offsets of a few pixels, some samples land outside the image
    visual = [torch.randn(2, 4, 5, 6, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64),
              torch.randn(2, 4, 2, 2, dtype=torch.float64)]
    calls = {index: [] for index in range(3)}
    for index, block in enumerate(dyconv.DyConv):
        block.conv.register_forward_hook(lambda m, args, out, index=index: calls[index].append((args, out)))
    with torch.no_grad():
        dyconv(visual)
        offset_masks = [dyconv.offset(v) for v in visual]

    # Level l calls DyConv[1] on level l, DyConv[2] on level l-1 (l > 0), DyConv[0] on level l+1 (l < last).
    expected_inputs = {1: [0, 1, 2], 2: [0, 1], 0: [1, 2]}
    offset_levels = {1: [0, 1, 2], 2: [1, 2], 0: [0, 1]}
    for index, block in enumerate(dyconv.DyConv):
        assert len(calls[index]) == len(expected_inputs[index])
        for (args, out), input_level, offset_level in zip(
                calls[index], expected_inputs[index], offset_levels[index]):
            assert args[0] is visual[input_level]
            offset_mask = offset_masks[offset_level]
            reference = reference_modulated_deform_conv(
                visual[input_level], offset_mask[:, :18], offset_mask[:, 18:].sigmoid(),
                block.conv.weight.detach(), block.conv.bias.detach(), block.conv.stride, 1)
            assert out.shape[-2:] == (visual[input_level].shape[-2:] if index != 2 else
                                      visual[offset_level].shape[-2:])
            torch.testing.assert_close(out, reference, atol=1e-12, rtol=1e-10)
    # The quirk really is exercised: the coarser level's offsets are not a crop of the finer ones.
    assert offset_masks[0].shape[-2:] != visual[1].shape[-2:]


def test_modulated_deform_conv_gradcheck():
    torch.manual_seed(0)
    image = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    # Offsets/masks live on a larger 4x4 grid than the 3x3 output: the per-sample buffer prefix is used.
    offset = (torch.rand(2, 18, 4, 4, dtype=torch.float64) * 3 - 1.5).requires_grad_(True)
    mask = torch.rand(2, 9, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def conv(*args):
        return modulated_deform_conv(*args, stride=1, padding=1)

    assert torch.autograd.gradcheck(conv, (image, offset, mask, weight, bias))
    with torch.no_grad():
        reference = reference_modulated_deform_conv(image, offset, mask, weight, bias, stride=1, padding=1)
        torch.testing.assert_close(conv(image, offset, mask, weight, bias), reference, atol=1e-12, rtol=1e-10)
    # Gradient only reaches the buffer prefix each sample's kernel reads.
    offset.grad = None
    conv(image, offset, mask, weight, bias).sum().backward()
    assert torch.all(offset.grad.flatten(1)[:, 18 * 9:] == 0)
    assert torch.any(offset.grad.flatten(1)[:, :18 * 9] != 0)


def test_upsampled_term_uses_align_corners():
    """The coarser-level term is upsampled with align_corners=True (F.upsample_bilinear)."""
    torch.manual_seed(0)
    dyconv = DyConv(4, 4, num_groups=2).double()
    visual = [torch.randn(1, 4, 5, 5, dtype=torch.float64), torch.randn(1, 4, 3, 3, dtype=torch.float64)]
    outputs = []
    dyconv.DyConv[0].register_forward_hook(lambda m, args, out: outputs.append(out))
    gate_inputs = []
    dyconv.AttnConv.register_forward_hook(lambda m, args, out: gate_inputs.append(args[0]))
    with torch.no_grad():
        dyconv(visual)
    # Level 0 terms: [DyConv[1](level 0), upsampled DyConv[0](level 1)].
    expected = F.interpolate(outputs[0], size=(5, 5), mode="bilinear", align_corners=True)
    torch.testing.assert_close(gate_inputs[1], expected, atol=0, rtol=0)
