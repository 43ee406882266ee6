"""How the model computes GLIP's function on a device: an execution plan, decided once per model and device.

Every plan computes the official function; they differ in how, which is a matter of the device:

* ``cpu``: memory-bound, few cores. The fusion attention is folded into the text side (the visual tokens meet
  three matmuls) and, at inference, runs in chunks of visual tokens; Swin attention and MLPs run in chunks at
  inference; training recomputes the Swin blocks and the DyConv blocks in backward instead of keeping their
  activations; the sampling-based deformable conv and the compiled CPU kernels are used.
* ``accelerator`` (CUDA, Ascend NPU): compute-bound, plenty of memory. Full attention through
  ``scaled_dot_product_attention``, no chunking, and recomputation only where the config asks for it
  (MODEL.BACKBONE.USE_CHECKPOINT, MODEL.DYHEAD.USE_CHECKPOINT for the fusion, as officially); compiled kernels
  where benchmarks/bench_ops.py measured them faster.
* ``reference``: the official code step by step (materialised attention matrices, text padded to
  MAX_QUERY_LEN, torchvision's deformable conv, no compiled kernel), to check the other plans against.

`GeneralizedVLRCNN` picks the plan from MODEL.EXECUTION_PLAN when it is built and, for ``auto``, again whenever it
is moved to another device type; modules read the plan they were given, never a process-wide switch.
"""
from dataclasses import dataclass, fields

from torch import nn

PLAN_CHOICES = ("auto", "cpu", "accelerator", "reference")


@dataclass(frozen=True)
class ExecutionPlan:
    """The implementation choices of one plan (see the module docstring)."""

    name: str
    fusion: str  # "folded", "sdpa" or "reference": how BiMultiHeadAttention computes
    chunked_inference: bool  # bound the temporaries of inference by chunks of tokens / windows
    recompute_backbone: bool  # recompute every Swin block in training, whatever USE_CHECKPOINT says
    recompute_dyconv: bool  # with MODEL.DYHEAD.USE_CHECKPOINT, recompute DyConv too, not only the fusion
    trim_text_padding: bool  # drop the padding columns after the batch's longest caption
    sampling_deform_conv: bool  # PyTorch DCN: grid_sample-based instead of torchvision's kernels
    compiled_kernels: bool  # compiled kernels where layers.dispatch.COMPILED_BY_DEFAULT lists them for the device
    deferred_finite_check: bool  # NaN/inf DCN offsets: one check per head forward instead of a sync per conv

    def describe(self) -> str:
        """One line for the log: the plan's name and every choice it makes."""
        choices = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name != "name")
        return f"{self.name} ({choices})"


CPU_PLAN = ExecutionPlan(
    name="cpu", fusion="folded", chunked_inference=True, recompute_backbone=True, recompute_dyconv=True,
    trim_text_padding=True, sampling_deform_conv=True, compiled_kernels=True, deferred_finite_check=False,
)
ACCELERATOR_PLAN = ExecutionPlan(
    name="accelerator", fusion="sdpa", chunked_inference=False, recompute_backbone=False, recompute_dyconv=False,
    trim_text_padding=True, sampling_deform_conv=False, compiled_kernels=True, deferred_finite_check=True,
)
REFERENCE_PLAN = ExecutionPlan(
    name="reference", fusion="reference", chunked_inference=False, recompute_backbone=False, recompute_dyconv=False,
    trim_text_padding=False, sampling_deform_conv=False, compiled_kernels=False, deferred_finite_check=False,
)
PLANS = {plan.name: plan for plan in (CPU_PLAN, ACCELERATOR_PLAN, REFERENCE_PLAN)}


def plan_for_device(device_type: str) -> ExecutionPlan:
    """The plan ``auto`` picks for a device type: ``cpu`` on the CPU, ``accelerator`` on CUDA, NPU and others."""
    return CPU_PLAN if device_type == "cpu" else ACCELERATOR_PLAN


def resolve_plan(choice: str, device_type: str) -> ExecutionPlan:
    """The plan named by MODEL.EXECUTION_PLAN (``auto`` follows the device type)."""
    if choice == "auto":
        return plan_for_device(device_type)
    if choice not in PLANS:
        raise ValueError(f"MODEL.EXECUTION_PLAN = {choice!r} is not a plan: expected one of {', '.join(PLAN_CHOICES)}")
    return PLANS[choice]


class UsesExecutionPlan:
    """Mixin of the modules whose computation depends on the plan; they start on the CPU plan."""

    execution_plan: ExecutionPlan = CPU_PLAN


def apply_execution_plan(module: nn.Module, plan: ExecutionPlan | str) -> ExecutionPlan:
    """Give `plan` (or the plan of that name) to every plan-dependent submodule of `module`; return it."""
    if isinstance(plan, str):
        if plan not in PLANS:
            raise ValueError(f"unknown execution plan {plan!r}: expected one of {', '.join(PLANS)}")
        plan = PLANS[plan]
    for submodule in module.modules():
        if isinstance(submodule, UsesExecutionPlan):
            submodule.execution_plan = plan
    return plan
