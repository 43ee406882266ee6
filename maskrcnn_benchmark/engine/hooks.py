"""Hooks the training loop calls after each evaluation during training: best model, LR auto-step, early stop.

Each hook keeps its state in the loop's `arguments`, which travel in every checkpoint, so that a resumed run
continues with the same best AP, patience count and schedule.
"""
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("maskrcnn_benchmark.trainer")


class TrainingHook:
    """Base hook: each method does nothing unless a subclass overrides it."""

    def before_train(self, arguments: dict[str, Any]) -> bool:
        """Called once before the first iteration of this run (also on resume); True: train no further."""
        return False

    def after_evaluation(self, iteration: int, average_precision: float, arguments: dict[str, Any]) -> bool:
        """Called after each evaluation during training; True asks the loop to stop."""
        return False

    def after_train(self, arguments: dict[str, Any]) -> None:
        """Called once after the last iteration of this run."""


class BestModelHook(TrainingHook):
    """Keep model_best.pth: the state of the evaluation with the highest AP so far (a later equal AP replaces it).

    As officially the best starts at 0.0 and an AP not below it is the new best; arguments["best_eval"] holds
    its iteration and AP (also inside model_best.pth), arguments["evaluations_since_best"] the evaluations since.
    `save` writes a named checkpoint of the current state with `arguments` (a collective under DDP).
    """

    def __init__(self, save: Callable[[str, dict[str, Any]], None]):
        self.save = save

    def after_evaluation(self, iteration: int, average_precision: float, arguments: dict[str, Any]) -> bool:
        """Save model_best when `average_precision` is not below the best so far, else count the evaluation."""
        best = arguments.setdefault("best_eval", {"iteration": 0, "ap": 0.0})
        if average_precision < best["ap"]:
            arguments["evaluations_since_best"] = arguments.get("evaluations_since_best", 0) + 1
            return False
        arguments["best_eval"] = {"iteration": iteration, "ap": average_precision}
        arguments["evaluations_since_best"] = 0
        self.save("model_best", arguments)
        logger.info("Iteration %d: best AP so far (%.4f), saved as model_best", iteration, average_precision)
        return False


class AutoStepHook(TrainingHook):
    """SOLVER.USE_AUTOSTEP: give each evaluation's AP to the plateau schedule (WarmupReduceLROnPlateau)."""

    def __init__(self, scheduler, optimizer):
        self.scheduler = scheduler
        self.optimizer = optimizer

    def after_evaluation(self, iteration: int, average_precision: float, arguments: dict[str, Any]) -> bool:
        """Step the schedule with the AP and log when it lowered the learning rate."""
        before = [group["lr"] for group in self.optimizer.param_groups]
        self.scheduler.step(average_precision)
        after = [group["lr"] for group in self.optimizer.param_groups]
        if after != before:
            logger.info("Iteration %d: the validation AP stalled; learning rate %.6g -> %.6g", iteration,
                        before[0], after[0])
        return False


class EarlyTerminationHook(TrainingHook):
    """SOLVER.AUTO_TERMINATE_PATIENCE: stop once that many evaluations in a row fell below the best AP.

    Reads the count BestModelHook keeps, so it must come after it in the hook list.
    """

    def __init__(self, patience: int):
        self.patience = patience

    def before_train(self, arguments: dict[str, Any]) -> bool:
        """True when resuming from the checkpoint of a run that already terminated early (it stays finished)."""
        if "auto_terminated_at" not in arguments:
            return False
        logger.info("The run in this OUTPUT_DIR stopped early at iteration %d (SOLVER.AUTO_TERMINATE_PATIENCE); "
                    "nothing more to train, its best model is model_best.pth (--no-resume trains again).",
                    arguments["auto_terminated_at"])
        return True

    def after_evaluation(self, iteration: int, average_precision: float, arguments: dict[str, Any]) -> bool:
        """True (stop) when the evaluations since the best reach the patience."""
        waited = arguments.get("evaluations_since_best", 0)
        if waited < self.patience:
            return False
        arguments["auto_terminated_at"] = iteration
        best = arguments["best_eval"]
        logger.info("Iteration %d: %d evaluations without reaching the best AP %.4f (iteration %d); training "
                    "stops early (SOLVER.AUTO_TERMINATE_PATIENCE).", iteration, waited, best["ap"], best["iteration"])
        return True


def validation_hooks(cfg, scheduler, optimizer, save: Callable[[str, dict[str, Any]], None]) -> list[TrainingHook]:
    """The hooks the config asks for when evaluating during training, in the official order."""
    hooks: list[TrainingHook] = []
    if cfg.SOLVER.USE_AUTOSTEP:
        hooks.append(AutoStepHook(scheduler, optimizer))
    hooks.append(BestModelHook(save))
    if cfg.SOLVER.AUTO_TERMINATE_PATIENCE != -1:
        hooks.append(EarlyTerminationHook(cfg.SOLVER.AUTO_TERMINATE_PATIENCE))
    return hooks
