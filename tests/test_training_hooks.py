"""The training loop's hooks: model_best, SOLVER.USE_AUTOSTEP, SOLVER.AUTO_TERMINATE_PATIENCE, and the default
hook list; the loop's wiring with a scripted evaluation."""
import logging
from types import SimpleNamespace

import pytest
import torch
from helpers import toy_training_loader
from torch import nn
from torch.utils.data import Dataset

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.engine import hooks, trainer
from maskrcnn_benchmark.engine.hooks import (
    AutoStepHook,
    BestModelHook,
    EarlyTerminationHook,
    default_hooks,
    validation_hooks,
)
from maskrcnn_benchmark.solver import make_lr_scheduler, make_optimizer
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.checkpoint import Checkpointer, read_checkpoint


class LinearDetector(nn.Module):
    """Images in, one loss out (the trainer's model interface)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3 * 4 * 4, 1)

    def forward(self, images, targets, **_):
        return {"loss": (self.body(images.tensors.flatten(1)) - 1.0).pow(2).mean()}


class RandomImages(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(3, 4, 4), BoxList(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), (4, 4)), index


def solver_cfg(output_dir, **solver):
    cfg = get_cfg_defaults()
    cfg.OUTPUT_DIR = str(output_dir)
    settings = dict(OPTIMIZER="SGD", BASE_LR=0.1, WARMUP_ITERS=1, MAX_ITER=12, IMS_PER_BATCH=2,
                    CHECKPOINT_PERIOD=100, LOG_PERIOD=100)
    settings.update(solver)
    for key, value in settings.items():
        cfg.SOLVER[key] = value
    cfg.TEST.EVAL_PERIOD = 2
    cfg.TEST.AFTER_TRAINING = True
    return cfg


def test_model_best_holds_the_best_evaluated_state(tmp_path):
    model = LinearDetector()
    checkpointer = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000001")
    hook = BestModelHook()
    arguments = {"iteration": 0}
    running = SimpleNamespace(arguments=arguments, checkpointer=checkpointer)
    states = {}
    for iteration, average_precision in [(2, 0.3), (4, 0.2), (6, 0.3), (8, 0.1)]:
        with torch.no_grad():
            model.body.weight.fill_(iteration)
        states[iteration] = model.state_dict()["body.weight"].clone()
        arguments["iteration"] = iteration
        assert hook.after_evaluation(running, average_precision) is False
    best = read_checkpoint(str(tmp_path / "model_best.pth"))
    # As officially an AP equal to the best replaces it: iteration 6, not 2.
    assert best["best_eval"] == {"iteration": 6, "ap": 0.3}
    assert torch.equal(best["model"]["body.weight"], states[6])
    assert arguments["best_eval"] == {"iteration": 6, "ap": 0.3} and arguments["evaluations_since_best"] == 1
    # model_best is a side file: a resume still starts from the last periodic checkpoint.
    assert checkpointer.get_checkpoint_file() == "model_0000001.pth"


def test_autostep_hook_lowers_the_lr_after_a_plateau(tmp_path, caplog):
    cfg = solver_cfg(tmp_path, USE_AUTOSTEP=True, STEP_PATIENCE=2, GAMMA=0.5, MIN_LR=0.0)
    model = LinearDetector()
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    scheduler.step()  # the one warm-up iteration
    hook = AutoStepHook()
    lrs = []
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.trainer"):
        for iteration, average_precision in enumerate([0.4, 0.4, 0.4, 0.4, 0.4, 0.4], start=1):
            running = SimpleNamespace(arguments={"iteration": iteration}, optimizer=optimizer, scheduler=scheduler)
            hook.after_evaluation(running, average_precision)
            lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05])
    assert "Iteration 4: the validation AP stalled; learning rate 0.1 -> 0.05" in caplog.text


def test_early_termination_after_the_patience():
    hook = EarlyTerminationHook(patience=2)
    arguments = {"best_eval": {"iteration": 2, "ap": 0.5}}
    running = SimpleNamespace(arguments=arguments)
    stops = []
    for iteration, waited in [(4, 1), (6, 2)]:
        arguments["iteration"], arguments["evaluations_since_best"] = iteration, waited
        stops.append(hook.after_evaluation(running, 0.1))
    assert stops == [False, True] and arguments["auto_terminated_at"] == 6
    assert hook.before_train(running) is True
    assert EarlyTerminationHook(2).before_train(SimpleNamespace(arguments={"iteration": 0})) is False


def test_validation_hooks_follow_the_config(tmp_path):
    names = lambda cfg: [type(h).__name__ for h in validation_hooks(cfg)]  # noqa: E731
    assert names(solver_cfg(tmp_path)) == ["BestModelHook"]
    assert names(solver_cfg(tmp_path, USE_AUTOSTEP=True, AUTO_TERMINATE_PATIENCE=3)) == [
        "AutoStepHook", "BestModelHook", "EarlyTerminationHook"]


def test_default_hooks_follow_the_config(tmp_path, caplog):
    names = lambda hook_list: [type(h).__name__ for h in hook_list]  # noqa: E731
    cfg = solver_cfg(tmp_path, USE_AUTOSTEP=True)
    assert names(default_hooks(cfg, [None], 5, 12)) == [
        "LoggingHook", "EvaluationHook", "AutoStepHook", "BestModelHook", "PeriodicCheckpointHook", "LossCurveHook"]
    with caplog.at_level(logging.WARNING, logger="maskrcnn_benchmark.trainer"):
        without_validation = default_hooks(cfg, None, 5, 12)
    assert names(without_validation) == ["LoggingHook", "PeriodicCheckpointHook", "LossCurveHook"]
    assert "set TEST.DURING_TRAINING True, or they change nothing" in caplog.text
    # Without TEST.EVAL_PERIOD the evaluation follows the checkpoints; the last iteration is evaluated during
    # training only when TEST.AFTER_TRAINING does not evaluate the trained model anyway.
    cfg.TEST.EVAL_PERIOD, cfg.TEST.AFTER_TRAINING = 0, False
    evaluation = default_hooks(cfg, [None], 5, 12)[1]
    assert (evaluation.period, evaluation.at_end) == (5, True)


def run(cfg, val_loader, hook_list=None):
    torch.manual_seed(0)
    model = LinearDetector()
    dataset = RandomImages()
    loader = toy_training_loader(dataset, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer, len(loader))
    checkpointer = Checkpointer(model, optimizer, scheduler, cfg.OUTPUT_DIR, save_to_disk=True)
    arguments = {"iteration": 0}
    arguments.update(checkpointer.load())
    return trainer.do_train(cfg, model, loader, optimizer, scheduler, checkpointer, torch.device("cpu"),
                            cfg.SOLVER.CHECKPOINT_PERIOD, arguments, val_data_loader=val_loader, hooks=hook_list)


def test_the_training_loop_stops_after_the_patience_and_stays_stopped(tmp_path, monkeypatch, caplog):
    # The loop's wiring, with the COCO evaluation replaced by a scripted AP per evaluation (the evaluation itself
    # is tested in test_evaluation.py): best at iteration 4, then two evaluations below it.
    scripted = iter([0.2, 0.5, 0.3, 0.1, 0.9, 0.9])
    monkeypatch.setattr(hooks, "evaluate_model", lambda *args, **kwargs: next(scripted))
    cfg = solver_cfg(tmp_path, AUTO_TERMINATE_PATIENCE=2)
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.trainer"):
        arguments = run(cfg, val_loader=[None])
    assert arguments["iteration"] == 8 and arguments["auto_terminated_at"] == 8
    assert arguments["best_eval"] == {"iteration": 4, "ap": 0.5}
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000008.pth", "model_best.pth"]
    assert read_checkpoint(str(tmp_path / "model_best.pth"))["iteration"] == 4
    assert "2 evaluations without reaching the best AP 0.5000 (iteration 4); training stops early" in caplog.text
    # Launched again on the same folder, the run resumes as finished and trains no further.
    again = run(cfg, val_loader=[None])
    assert again["iteration"] == 8 and next(scripted) == 0.9


def test_a_custom_hook_sees_every_step_and_can_stop_the_run(tmp_path):
    class StopAtThree(hooks.TrainingHook):
        def __init__(self):
            self.calls = []

        def before_train(self, running):
            self.calls.append(("before", running.arguments["iteration"]))
            return False

        def after_step(self, running):
            self.calls.append(("step", running.arguments["iteration"]))
            return running.arguments["iteration"] == 3

        def after_train(self, running):
            self.calls.append(("after", running.arguments["iteration"]))

    hook = StopAtThree()
    cfg = solver_cfg(tmp_path)
    arguments = run(cfg, val_loader=None, hook_list=[hook, *default_hooks(cfg, None, cfg.SOLVER.CHECKPOINT_PERIOD, 12)])
    assert hook.calls == [("before", 0), ("step", 1), ("step", 2), ("step", 3), ("after", 3)]
    # The checkpoint hook after it saw the stop: the run's last state is saved.
    assert arguments["iteration"] == 3 and (tmp_path / "model_0000003.pth").exists()


def test_the_loop_starts_the_loader_where_the_run_stopped():
    from maskrcnn_benchmark.engine.train_loop import start_loader_at

    dataset = RandomImages()
    loader = toy_training_loader(dataset, 2, 6, shuffle=False)
    start_loader_at(loader, 4)
    assert [batch.img_ids for batch in loader] == [(0, 1), (2, 3)]  # iterations 5 and 6 (the third pass)
    start_loader_at([None], 0)  # a fresh run may train on any iterable
    with pytest.raises(ValueError, match=r"Resuming at iteration 3 needs a training loader whose batch_sampler"):
        start_loader_at([None], 3)
