"""SOLVER.TUNING_HIGHLEVEL_OVERRIDE: the official fine-tuning presets, applied by tools/finetune.py.

Each preset sets the freeze, linear-probe and prompt-layer keys to the official values; the model builder then
freezes accordingly (modeling/detector/generalized_vl_rcnn.py).
"""
from typing import Any

_FREEZE_KEYS = ("MODEL.BACKBONE.FREEZE", "MODEL.FPN.FREEZE", "MODEL.RPN.FREEZE", "MODEL.LINEAR_PROB",
                "MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER", "MODEL.LANGUAGE_BACKBONE.FREEZE")


def _preset(*values: bool, **extra: Any) -> dict[str, Any]:
    return dict(zip(_FREEZE_KEYS, values), **{key.replace("__", "."): value for key, value in extra.items()})


# Preset -> key -> value, in the order of _FREEZE_KEYS: backbone, FPN, head frozen; linear probe; prompt layer
# (a learnt offset per token position); language backbone frozen.
TUNING_PRESETS: dict[str, dict[str, Any]] = {
    "full": _preset(False, False, False, False, False, False),
    # The official preset also turns off gradient checkpointing of the head.
    "linear_prob": _preset(True, True, False, True, False, True, MODEL__DYHEAD__USE_CHECKPOINT=False),
    "language_prompt_v1": _preset(True, True, True, False, False, False),  # the language backbone trains
    "language_prompt_v2": _preset(True, True, True, False, True, True),  # only the prompt layer trains
    "language_prompt_v3": _preset(True, True, True, True, False, False),
    "language_prompt_v4": _preset(True, True, True, True, True, True),
}


def apply_tuning_preset(cfg) -> None:
    """Set the keys of SOLVER.TUNING_HIGHLEVEL_OVERRIDE's preset in `cfg` (not frozen); None changes nothing."""
    name = cfg.SOLVER.TUNING_HIGHLEVEL_OVERRIDE
    if name is None:
        return
    if name not in TUNING_PRESETS:
        raise ValueError(f"SOLVER.TUNING_HIGHLEVEL_OVERRIDE {name!r} is not a preset; use one of "
                         f"{sorted(TUNING_PRESETS)} (or leave it unset and set the FREEZE keys yourself).")
    for key, value in TUNING_PRESETS[name].items():
        *sections, leaf = key.split(".")
        node = cfg
        for section in sections:
            node = node[section]
        node[leaf] = value
