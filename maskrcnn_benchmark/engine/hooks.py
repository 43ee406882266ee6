"""The training loop's hooks (engine.train_loop.Trainer calls them): logging, the weight-decay schedule, evaluation
during training, model_best, the LR auto-step, early termination, periodic checkpoints and the loss curve.

Hooks keep their state in the trainer's `arguments`, which travel in every checkpoint, so that a resumed run
continues with the same best AP, patience count and schedule. Under DDP every process calls every hook (checkpoints
and evaluations are collectives); what is logged or drawn comes from rank 0.
"""
import logging
import time
from collections.abc import Iterable

from maskrcnn_benchmark.utils.comm import is_main_process

from .evaluation import evaluate_model
from .trainer import log_line, log_skip_totals, log_training_summary, save_checkpoint, write_loss_curve

logger = logging.getLogger("maskrcnn_benchmark.trainer")


class TrainingHook:
    """Base hook: each method does nothing unless a subclass overrides it; `trainer` is the Trainer running."""

    def before_train(self, trainer) -> bool:
        """Called once before the first iteration of this run (also on resume); True: train no further."""
        return False

    def after_step(self, trainer) -> bool:
        """Called after each iteration (trainer.arguments["iteration"]); True asks the loop to stop."""
        return False

    def after_evaluation(self, trainer, average_precision: float) -> bool:
        """Called after each evaluation during training; True asks the loop to stop."""
        return False

    def after_train(self, trainer) -> None:
        """Called once after the last iteration of this run."""


class LoggingHook(TrainingHook):
    """The log line every `period` iterations and at the last one; at the end the training time, the throughput
    and the totals of skipped batches and steps."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self, trainer) -> bool:
        """Log the line when the period or the run's last iteration is reached (rank 0, once a step was timed)."""
        iteration = trainer.arguments["iteration"]
        due = iteration % self.period == 0 or iteration == trainer.stop_iter
        if due and is_main_process() and "time" in trainer.meters.meters:
            logger.info(log_line(trainer.meters, iteration, trainer.stop_iter, trainer.optimizer, trainer.device,
                                 trainer.arguments["skipped_steps"], trainer.arguments["skipped_batches"]))
        return False

    def after_train(self, trainer) -> None:
        """The training summary the launch scripts report, and the skip totals."""
        log_training_summary(time.perf_counter() - trainer.start_time,
                             trainer.arguments["iteration"] - trainer.start_iter, trainer.iteration_seconds,
                             trainer.cfg.SOLVER.IMS_PER_BATCH)
        log_skip_totals(trainer.arguments)


class WeightDecayScheduleHook(TrainingHook):
    """SOLVER.WEIGHT_DECAY_SCHEDULE (GLIP-L): every group's weight decay is multiplied by the LR schedule's gamma
    once the schedule reaches `ratio` x each of its milestones (SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO), one milestone
    per iteration, as officially. Officially checked before each step; here after the previous one, the same point.
    A schedule without milestones (SOLVER.USE_AUTOSTEP) leaves the decay alone, as officially."""

    def __init__(self, ratio: float):
        self.ratio = ratio
        self.passed = 0  # milestones whose decay drop is done (a resumed optimizer holds the lowered decay)

    def before_train(self, trainer) -> bool:
        """Count the milestones a resumed run has passed; warn when the schedule has none."""
        milestones = getattr(trainer.scheduler, "milestones", None)
        if milestones is None:
            logger.warning("SOLVER.WEIGHT_DECAY_SCHEDULE follows the LR milestones of SOLVER.STEPS; this schedule "
                           "(SOLVER.USE_AUTOSTEP) has none, so the weight decay stays as it is (as officially).")
            return False
        self.passed = sum(trainer.scheduler.last_epoch >= milestone * self.ratio for milestone in milestones)
        return False

    def after_step(self, trainer) -> bool:
        """Lower the weight decay when the next milestone's point is reached."""
        milestones = list(getattr(trainer.scheduler, "milestones", ()))
        if self.passed >= len(milestones) or trainer.scheduler.last_epoch < milestones[self.passed] * self.ratio:
            return False
        gamma = trainer.scheduler.gamma
        for group in trainer.optimizer.param_groups:
            if "weight_decay" in group:
                group["weight_decay"] *= gamma
        self.passed += 1
        logger.info("Iteration %d: weight decay x %g (SOLVER.WEIGHT_DECAY_SCHEDULE, %d of %d)",
                    trainer.arguments["iteration"], gamma, self.passed, len(milestones))
        return False


class EvaluationHook(TrainingHook):
    """Evaluate on `data_loader` every `period` iterations, and at the run's last iteration when `at_end`.

    The model is evaluated (its EMA with SOLVER.USE_EMA_FOR_MONITOR), arguments["eval_result"] records the AP,
    every hook's after_evaluation sees it, and the model is back in training mode afterwards.
    """

    def __init__(self, data_loader: Iterable, period: int, at_end: bool):
        self.data_loader = data_loader
        self.period = period
        self.at_end = at_end

    def after_step(self, trainer) -> bool:
        """Evaluate when due; True when a hook stops the run after the evaluation."""
        iteration = trainer.arguments["iteration"]
        if not (iteration % self.period == 0 or self.at_end and iteration == trainer.stop_iter):
            return False
        cfg = trainer.cfg
        monitored = trainer.model
        if trainer.model_ema is not None and cfg.SOLVER.USE_EMA_FOR_MONITOR:
            monitored = trainer.model_ema.ema
        average_precision = evaluate_model(cfg, monitored, self.data_loader, trainer.device)
        trainer.arguments["eval_result"] = average_precision
        trainer.model.train()
        logger.info("Iteration %d: evaluation AP %.4f", iteration, average_precision)
        return trainer.after_evaluation(average_precision)


class PeriodicCheckpointHook(TrainingHook):
    """model_final at the schedule's last iteration (`max_iter`), else model_<iteration> every `period`
    iterations and when the run ends early (--early_stop_iteration, early termination)."""

    def __init__(self, period: int, max_iter: int):
        self.period = period
        self.max_iter = max_iter

    def after_step(self, trainer) -> bool:
        """Save when due (a collective: every process calls it)."""
        iteration = trainer.arguments["iteration"]
        if iteration == self.max_iter:
            save_checkpoint(trainer.checkpointer, "model_final", trainer.arguments)
        elif iteration % self.period == 0 or iteration == trainer.stop_iter or trainer.stop_requested:
            save_checkpoint(trainer.checkpointer, f"model_{iteration:07d}", trainer.arguments)
        return False


class LossCurveHook(TrainingHook):
    """loss_curve.png in `output_dir` from the run's loss history, at the end."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def after_train(self, trainer) -> None:
        """Draw the curve (rank 0)."""
        write_loss_curve(trainer.arguments["loss_history"], self.output_dir)


class BestModelHook(TrainingHook):
    """Keep model_best.pth: the state of the evaluation with the highest AP so far (a later equal AP replaces it).

    As officially the best starts at 0.0 and an AP not below it is the new best; arguments["best_eval"] holds
    its iteration and AP (also inside model_best.pth), arguments["evaluations_since_best"] the evaluations since.
    model_best leaves `last_checkpoint` where it was: a resume starts from the last periodic checkpoint.
    """

    def after_evaluation(self, trainer, average_precision: float) -> bool:
        """Save model_best when `average_precision` is not below the best so far, else count the evaluation."""
        arguments = trainer.arguments
        iteration = arguments["iteration"]
        best = arguments.setdefault("best_eval", {"iteration": 0, "ap": 0.0})
        if average_precision < best["ap"]:
            arguments["evaluations_since_best"] = arguments.get("evaluations_since_best", 0) + 1
            return False
        arguments["best_eval"] = {"iteration": iteration, "ap": average_precision}
        arguments["evaluations_since_best"] = 0
        save_checkpoint(trainer.checkpointer, "model_best", arguments, tag_last=False)
        logger.info("Iteration %d: best AP so far (%.4f), saved as model_best", iteration, average_precision)
        return False


class AutoStepHook(TrainingHook):
    """SOLVER.USE_AUTOSTEP: give each evaluation's AP to the plateau schedule (WarmupReduceLROnPlateau)."""

    def after_evaluation(self, trainer, average_precision: float) -> bool:
        """Step the schedule with the AP and log when it lowered the learning rate."""
        before = [group["lr"] for group in trainer.optimizer.param_groups]
        trainer.scheduler.step(average_precision)
        after = [group["lr"] for group in trainer.optimizer.param_groups]
        if after != before:
            logger.info("Iteration %d: the validation AP stalled; learning rate %.6g -> %.6g",
                        trainer.arguments["iteration"], before[0], after[0])
        return False


class EarlyTerminationHook(TrainingHook):
    """SOLVER.AUTO_TERMINATE_PATIENCE: stop once that many evaluations in a row fell below the best AP.

    Reads the count BestModelHook keeps, so it must come after it in the hook list.
    """

    def __init__(self, patience: int):
        self.patience = patience

    def before_train(self, trainer) -> bool:
        """True when resuming from the checkpoint of a run that already terminated early (it stays finished)."""
        if "auto_terminated_at" not in trainer.arguments:
            return False
        logger.info("The run in this OUTPUT_DIR stopped early at iteration %d (SOLVER.AUTO_TERMINATE_PATIENCE); "
                    "nothing more to train, its best model is model_best.pth (--no-resume trains again).",
                    trainer.arguments["auto_terminated_at"])
        return True

    def after_evaluation(self, trainer, average_precision: float) -> bool:
        """True (stop) when the evaluations since the best reach the patience."""
        arguments = trainer.arguments
        waited = arguments.get("evaluations_since_best", 0)
        if waited < self.patience:
            return False
        arguments["auto_terminated_at"] = iteration = arguments["iteration"]
        best = arguments["best_eval"]
        logger.info("Iteration %d: %d evaluations without reaching the best AP %.4f (iteration %d); training "
                    "stops early (SOLVER.AUTO_TERMINATE_PATIENCE).", iteration, waited, best["ap"], best["iteration"])
        return True


def validation_hooks(cfg) -> list[TrainingHook]:
    """The hooks of the evaluations' results the config asks for, in the official order."""
    hooks: list[TrainingHook] = []
    if cfg.SOLVER.USE_AUTOSTEP:
        hooks.append(AutoStepHook())
    hooks.append(BestModelHook())
    if cfg.SOLVER.AUTO_TERMINATE_PATIENCE != -1:
        hooks.append(EarlyTerminationHook(cfg.SOLVER.AUTO_TERMINATE_PATIENCE))
    return hooks


def default_hooks(cfg, val_data_loader: Iterable | None, checkpoint_period: int, max_iter: int
                  ) -> list[TrainingHook]:
    """The hooks of a run as the config asks: logging, evaluation during training (with `val_data_loader`, every
    TEST.EVAL_PERIOD iterations or else every checkpoint) and its result hooks, checkpoints, the loss curve."""
    hooks: list[TrainingHook] = [LoggingHook(cfg.SOLVER.LOG_PERIOD)]
    if cfg.SOLVER.WEIGHT_DECAY_SCHEDULE:
        hooks.append(WeightDecayScheduleHook(cfg.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO))
    if val_data_loader is not None:
        eval_period = cfg.TEST.EVAL_PERIOD if cfg.TEST.EVAL_PERIOD > 0 else checkpoint_period
        # The last iteration is evaluated here unless TEST.AFTER_TRAINING evaluates the trained model anyway.
        hooks.append(EvaluationHook(val_data_loader, eval_period, at_end=not cfg.TEST.AFTER_TRAINING))
        hooks += validation_hooks(cfg)
    elif cfg.SOLVER.USE_AUTOSTEP or cfg.SOLVER.AUTO_TERMINATE_PATIENCE != -1:
        logger.warning("SOLVER.USE_AUTOSTEP and SOLVER.AUTO_TERMINATE_PATIENCE act on the AP of evaluations "
                       "during training: set TEST.DURING_TRAINING True, or they change nothing.")
    # After the evaluation, so that a run stopped by early termination saves its last state.
    hooks += [PeriodicCheckpointHook(checkpoint_period, max_iter), LossCurveHook(cfg.OUTPUT_DIR)]
    return hooks
