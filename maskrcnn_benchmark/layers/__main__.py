"""`python -m maskrcnn_benchmark.layers`: print which implementation each custom op uses on each device type."""
from maskrcnn_benchmark.layers import dispatch


def main() -> None:
    """Print the extension's state and the op x device-type table of implementations."""
    if dispatch.load_extension():
        built = [device for device in ("cpu", "cuda") if dispatch.compiled_kernel_available("ml_nms", device)]
        status = f"loaded ({dispatch.EXTENSION}, kernels for: {', '.join(built)})"
    else:
        status = f"not built ({dispatch.extension_error()})"
    print(f"mode: {dispatch.mode()} (GLIP_OPS=auto|compiled|pytorch)")
    print(f"extension: {status}")
    width = max(len(op) for op in dispatch.OPS) + 2
    print(("op".ljust(width) + "".join(device.ljust(10) for device in dispatch.DEVICE_TYPES)).rstrip())
    for op, chosen in dispatch.describe():
        print((op.ljust(width) + "".join(chosen[device].ljust(10) for device in dispatch.DEVICE_TYPES)).rstrip())


main()
