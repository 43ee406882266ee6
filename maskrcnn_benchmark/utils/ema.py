"""Exponential moving average of a model's weights (SOLVER.MODEL_EMA)."""
import copy

import torch
from torch import nn

from .checkpoint import load_state_dict


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


class ModelEma:
    """Keeps `ema = decay * ema + (1 - decay) * weights` of every floating-point state_dict entry.

    Integer buffers (e.g. Swin's relative position index) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, device: torch.device | None = None):
        self.ema = copy.deepcopy(unwrap_model(model))
        self.ema.eval()
        self.decay = decay
        self.device = device
        if device is not None:
            self.ema.to(device)
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start the average over at the current weights of `model` (wrapped or not)."""
        current = unwrap_model(model).state_dict()
        for name, ema_value in self.ema.state_dict().items():
            ema_value.copy_(current[name])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards the current weights of `model` (wrapped or not)."""
        current = unwrap_model(model).state_dict()
        averaged, targets = [], []
        for name, ema_value in self.ema.state_dict().items():
            value = current[name].detach()
            if self.device is not None:
                value = value.to(self.device)
            if ema_value.is_floating_point():
                averaged.append(ema_value)
                targets.append(value)
            else:
                ema_value.copy_(value)
        if averaged:
            torch._foreach_mul_(averaged, self.decay)
            torch._foreach_add_(averaged, targets, alpha=1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (keys without the DDP `module.` prefix)."""
        return self.ema.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Restore averaged weights (keys with or without the `module.` prefix)."""
        load_state_dict(self.ema, state_dict, source="model_ema")
