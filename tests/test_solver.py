"""Optimizer and LR schedule: official parameter groups, full-model clipping, warm-up + multi-step closed form, EMA."""
import math

import pytest
import torch
from torch import nn

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.solver import WarmupMultiStepLR, WarmupReduceLROnPlateau, make_lr_scheduler, make_optimizer
from maskrcnn_benchmark.solver.build import ClippedAdamW, max_iter_from_epochs, resolve_milestones
from maskrcnn_benchmark.utils.ema import ModelEma


class NamedLikeGlip(nn.Module):
    """Parameters named like GLIP's: visual body, FPN, language body, head with bias0/bias_lang, norms."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.body = nn.Module()
        self.backbone.body.proj = nn.Linear(3, 4)
        self.backbone.body.norm1 = nn.LayerNorm(4)
        self.backbone.body.relative_position_bias_table = nn.Parameter(torch.zeros(5, 2))
        self.backbone.fpn = nn.Linear(4, 4)
        self.language_backbone = nn.Module()
        self.language_backbone.body = nn.Module()
        self.language_backbone.body.dense = nn.Linear(4, 4)
        self.language_backbone.body.LayerNorm = nn.LayerNorm(4)
        self.rpn = nn.Module()
        self.rpn.bias0 = nn.Parameter(torch.zeros(1))
        self.rpn.frozen = nn.Linear(4, 2)
        self.rpn.frozen.requires_grad_(False)


def solver_cfg(**solver):
    cfg = get_cfg_defaults()
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.LANG_LR = 1e-5
    cfg.SOLVER.BACKBONE_BODY_LR_FACTOR = 0.5
    cfg.SOLVER.BIAS_LR_FACTOR = 2
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.001
    cfg.SOLVER.WEIGHT_DECAY_NORM_FACTOR = 0.1
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def settings_by_name(model, optimizer):
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def test_parameter_groups_follow_the_official_rules():
    model = NamedLikeGlip()
    optimizer = make_optimizer(solver_cfg(), model)
    assert type(optimizer) is torch.optim.AdamW
    expected = {
        # visual body: BASE_LR * BACKBONE_BODY_LR_FACTOR
        "backbone.body.proj.weight": (5e-5, 0.05),
        "backbone.body.proj.bias": (1e-4, 0.001),  # bias: x BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS
        "backbone.body.norm1.weight": (5e-5, 0.05 * 0.1),  # norm: decay x WEIGHT_DECAY_NORM_FACTOR
        "backbone.body.norm1.bias": (1e-4, 0.001 * 0.1),
        "backbone.body.relative_position_bias_table": (1e-4, 0.001),  # "bias" anywhere in the name
        "backbone.fpn.weight": (1e-4, 0.05),
        "backbone.fpn.bias": (2e-4, 0.001),
        # language backbone: LANG_LR
        "language_backbone.body.dense.weight": (1e-5, 0.05),
        "language_backbone.body.dense.bias": (2e-5, 0.001),
        "language_backbone.body.LayerNorm.weight": (1e-5, 0.05 * 0.1),
        "language_backbone.body.LayerNorm.bias": (2e-5, 0.001 * 0.1),
        "rpn.bias0": (2e-4, 0.001),
    }
    got = settings_by_name(model, optimizer)
    assert set(got) == set(expected)  # frozen parameters are left out
    for name, (lr, decay) in expected.items():
        assert got[name][0] == pytest.approx(lr, rel=1e-12), name
        assert got[name][1] == pytest.approx(decay, rel=1e-12), name


def test_grouped_adamw_updates_equal_one_group_per_parameter():
    torch.manual_seed(0)
    model, reference = NamedLikeGlip(), NamedLikeGlip()
    reference.load_state_dict(model.state_dict())
    optimizer = make_optimizer(solver_cfg(), model)
    lr_decay = settings_by_name(model, optimizer)
    per_parameter = torch.optim.AdamW(
        [{"params": [p], "lr": lr_decay[n][0], "weight_decay": lr_decay[n][1]}
         for n, p in reference.named_parameters() if p.requires_grad], lr=1e-4)
    inputs = torch.randn(6, 3)
    for _ in range(3):
        for net, opt in ((model, optimizer), (reference, per_parameter)):
            body = net.backbone.body
            hidden = body.norm1(body.proj(inputs)) + body.relative_position_bias_table.sum() + net.rpn.bias0
            out = net.language_backbone.body.LayerNorm(net.language_backbone.body.dense(net.backbone.fpn(hidden)))
            opt.zero_grad()
            (out ** 2).mean().backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_full_model_gradient_clipping_and_sgd():
    model = NamedLikeGlip()
    cfg = solver_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    optimizer = make_optimizer(cfg, model)
    assert isinstance(optimizer, ClippedAdamW) and isinstance(optimizer, torch.optim.AdamW)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 10.0)
    optimizer.step()
    grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
    assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item() == \
        pytest.approx(0.5, rel=1e-5)

    sgd = make_optimizer(solver_cfg(OPTIMIZER="SGD", MOMENTUM=0.8), NamedLikeGlip())
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.8


def closed_form_lr(base_lr, iteration, warmup_iters, warmup_factor, milestones, gamma):
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    else:
        factor = 1.0
    return base_lr * factor * gamma ** sum(iteration >= m for m in milestones)


def test_warmup_multistep_lr_matches_closed_form_with_fractional_steps():
    cfg = solver_cfg(WARMUP_ITERS=10, WARMUP_FACTOR=0.001, STEPS=(0.67, 0.89), GAMMA=0.1, MAX_ITER=40000)
    cfg.freeze()
    model = NamedLikeGlip()
    optimizer = make_optimizer(cfg, model)
    # MAX_EPOCH-derived iteration count, passed in: the (frozen) config is not written.
    scheduler = make_lr_scheduler(cfg, optimizer, max_iter=100)
    assert scheduler.milestones == [67, 89]
    base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    lang_group = base_lrs.index(1e-5)
    checked = {0, 1, 5, 9, 10, 11, 66, 67, 68, 88, 89, 99}
    for iteration in range(100):
        if iteration in checked:
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                expected = closed_form_lr(base_lr, iteration, 10, 0.001, [67, 89], 0.1)
                assert group["lr"] == pytest.approx(expected, rel=1e-9), (iteration, base_lr)
            # The language group keeps LANG_LR's ratio to the vision groups at every iteration.
            assert optimizer.param_groups[lang_group]["lr"] == pytest.approx(
                closed_form_lr(1e-5, iteration, 10, 0.001, [67, 89], 0.1), rel=1e-9)
        optimizer.step()
        scheduler.step()
    assert cfg.SOLVER.MAX_ITER == 40000


def test_milestones_and_iteration_count():
    assert resolve_milestones((0.67, 0.89), 1000) == [670, 890]
    assert resolve_milestones((30000,), 1000) == [30000]  # steps >= 1 are iterations
    assert resolve_milestones((0.5,), 5) == [2]  # Python round (half to even), as officially
    assert max_iter_from_epochs(24, 117266, 8) == 351798
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), [5, 3])


def test_constant_warmup_and_unsupported_schedules():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = WarmupMultiStepLR(optimizer, [4], gamma=0.5, warmup_factor=0.25, warmup_iters=2,
                                  warmup_method="constant")
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == [0.5, 0.5, 2.0, 2.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="USE_COSINE"):
        make_lr_scheduler(solver_cfg(USE_COSINE=True), optimizer)


def test_weight_decay_schedule_lowers_the_decay_at_the_ratio_of_each_lr_step():
    # Worked out from the official trainer: milestones 10 and 20 at ratio 0.5 drop every group's weight decay by
    # gamma once the scheduler has stepped 5 and then 10 times; a resumed run counts the drops already done.
    from types import SimpleNamespace

    from maskrcnn_benchmark.engine.hooks import WeightDecayScheduleHook, default_hooks

    cfg = solver_cfg(WEIGHT_DECAY_SCHEDULE=True, WEIGHT_DECAY_SCHEDULE_RATIO=0.5, STEPS=(10, 20), GAMMA=0.1,
                     WARMUP_ITERS=0)
    model = NamedLikeGlip()
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer, 30)
    decays = [group["weight_decay"] for group in optimizer.param_groups]
    running = SimpleNamespace(scheduler=scheduler, optimizer=optimizer, arguments={"iteration": 0})
    hook = WeightDecayScheduleHook(cfg.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO)
    assert hook.before_train(running) is False
    factors = []
    for iteration in range(1, 13):
        optimizer.step()
        scheduler.step()
        running.arguments["iteration"] = iteration
        hook.after_step(running)
        factors.append(optimizer.param_groups[0]["weight_decay"] / decays[0])
    assert factors == pytest.approx([1] * 4 + [0.1] * 5 + [0.01] * 3)
    assert [group["weight_decay"] for group in optimizer.param_groups] == pytest.approx([d * 0.01 for d in decays])
    resumed = WeightDecayScheduleHook(0.5)
    resumed.before_train(running)
    assert resumed.passed == 2
    assert "WeightDecayScheduleHook" in [type(h).__name__ for h in default_hooks(cfg, None, 100, 30)]


def test_autostep_warms_up_then_lowers_the_lr_on_a_plateau_of_the_ap():
    # Worked out from the official WarmupReduceLROnPlateau: the LR is untouched until the first step; the last
    # warm-up step already uses the full LR; then more than `patience` evaluations without a better AP multiply
    # it by gamma, never below MIN_LR; an AP of exactly 0 is not counted.
    cfg = solver_cfg(USE_AUTOSTEP=True, BASE_LR=1.0, WARMUP_ITERS=3, WARMUP_FACTOR=0.1, GAMMA=0.5,
                     STEP_PATIENCE=1, MIN_LR=0.2)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_lr_scheduler(cfg, optimizer)
    assert isinstance(scheduler, WarmupReduceLROnPlateau)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(4):
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 0.1, 0.4, 1.0, 1.0])
    after_each_ap = []
    for average_precision in [0.5, 0.5, 0.5, 0.0, 0.5, 0.5]:
        scheduler.step(average_precision)
        after_each_ap.append(optimizer.param_groups[0]["lr"])
    assert after_each_ap == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.5, 0.25])
    # The state travels in checkpoints: a restored schedule continues the same plateau count.
    restored_optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    restored = make_lr_scheduler(cfg, restored_optimizer)
    restored_optimizer.load_state_dict(optimizer.state_dict())
    restored.load_state_dict(scheduler.state_dict())
    for schedule, group in ((scheduler, optimizer.param_groups[0]), (restored, restored_optimizer.param_groups[0])):
        schedule.step(0.5)
        schedule.step(0.5)
        assert group["lr"] == pytest.approx(0.2)  # 0.125 is below MIN_LR
        schedule.step(0.6)
        assert schedule.best == 0.6 and schedule.num_bad_epochs == 0


def test_autostep_metric_during_warmup_advances_the_warmup():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupReduceLROnPlateau(optimizer, 0.5, warmup_factor=0.5, warmup_iters=4, patience=0)
    scheduler.step(0.9)
    scheduler.step(0.9)
    assert scheduler.last_epoch == 2 and optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 0.75 + 0.25)
    with pytest.raises(ValueError, match="warm-up methods"):
        WarmupReduceLROnPlateau(optimizer, warmup_method="cosine")


def test_model_ema_averages_floats_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    model.register_buffer("index", torch.arange(4))
    ema = ModelEma(model, decay=0.9)
    start = model[0].weight.detach().clone()
    assert all(not p.requires_grad for p in ema.ema.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model.index.add_(3)
    ema.update(model)
    torch.testing.assert_close(ema.state_dict()["0.weight"], 0.9 * start + 0.1 * (start + 1.0))
    assert torch.equal(ema.state_dict()["index"], torch.arange(4) + 3)
    wrapped = nn.Module()
    wrapped.module = model  # DDP-like wrapper: the EMA follows the inner model
    ema.update(wrapped)
    restored = ModelEma(nn.Sequential(nn.Linear(3, 2)), decay=0.9)
    restored.load_state_dict({"module." + k: v for k, v in ema.state_dict().items() if k != "index"})
    assert torch.equal(restored.state_dict()["0.weight"], ema.state_dict()["0.weight"])
    assert math.isclose(ema.decay, 0.9)
