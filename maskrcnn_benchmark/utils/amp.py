"""Mixed precision through torch.amp: float16 with loss scaling on CUDA/NPU, bfloat16 on CPU, or as SOLVER.AMP_DTYPE
says."""
import torch

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype(device_type: str, choice: str = "") -> torch.dtype:
    """The autocast dtype: SOLVER.AMP_DTYPE's `choice`, or by default bfloat16 on the CPU (no fast float16 there)
    and float16 elsewhere."""
    if choice:
        if choice not in AMP_DTYPES:
            raise ValueError(f"SOLVER.AMP_DTYPE = {choice!r} is not an autocast dtype: use 'float16', 'bfloat16' or "
                             "'' (float16 on CUDA and NPU, bfloat16 on the CPU)")
        return AMP_DTYPES[choice]
    return torch.bfloat16 if device_type == "cpu" else torch.float16


def autocast(device_type: str, enabled: bool = True, dtype: torch.dtype | None = None) -> torch.autocast:
    """An autocast context for `device_type` with `dtype` (default: its AMP dtype); a no-op when not enabled."""
    return torch.autocast(device_type=device_type, dtype=dtype or amp_dtype(device_type), enabled=enabled)


def make_grad_scaler(device_type: str, enabled: bool = True, dtype: torch.dtype | None = None) -> torch.amp.GradScaler:
    """A loss scaler, active only for float16 autocast (bfloat16 has float32's range and needs none)."""
    active = enabled and (dtype or amp_dtype(device_type)) == torch.float16
    return torch.amp.GradScaler(device_type, enabled=active)
