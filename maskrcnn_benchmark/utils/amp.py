"""Mixed precision through torch.amp: float16 with loss scaling on CUDA/NPU, bfloat16 on CPU."""
import torch


def amp_dtype(device_type: str) -> torch.dtype:
    """The autocast dtype of a device type: bfloat16 on CPU (no fast float16 there), float16 elsewhere."""
    return torch.bfloat16 if device_type == "cpu" else torch.float16


def autocast(device_type: str, enabled: bool = True) -> torch.autocast:
    """An autocast context for `device_type` with its AMP dtype (a no-op context when not enabled)."""
    return torch.autocast(device_type=device_type, dtype=amp_dtype(device_type), enabled=enabled)


def make_grad_scaler(device_type: str, enabled: bool = True) -> torch.amp.GradScaler:
    """A loss scaler, active only for float16 autocast (bfloat16 has float32's range and needs none)."""
    active = enabled and amp_dtype(device_type) == torch.float16
    return torch.amp.GradScaler(device_type, enabled=active)
