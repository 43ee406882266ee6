"""`python -m maskrcnn_benchmark.layers`: print which implementation each custom op uses on each device type."""
from maskrcnn_benchmark.layers import _ops


def main() -> None:
    """Print the extension's state and the op x device-type table of implementations."""
    if _ops.load_extension():
        built = [device for device in ("cpu", "cuda") if _ops.compiled_kernel_available("ml_nms", device)]
        status = f"loaded ({_ops.EXTENSION}, kernels for: {', '.join(built)})"
    else:
        status = f"not built ({_ops.extension_error()})"
    print(f"mode: {_ops.mode()} (GLIP_OPS=auto|compiled|pytorch)")
    print(f"extension: {status}")
    width = max(len(op) for op in _ops.OPS) + 2
    print(("op".ljust(width) + "".join(device.ljust(10) for device in _ops.DEVICE_TYPES)).rstrip())
    for op, chosen in _ops.describe():
        print((op.ljust(width) + "".join(chosen[device].ljust(10) for device in _ops.DEVICE_TYPES)).rstrip())


main()
