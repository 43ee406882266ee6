"""Install the maskrcnn_benchmark package (GLIP).

No compiler is needed: every op has a PyTorch implementation. When PyTorch and a C++ compiler are present, the
optional extension `maskrcnn_benchmark._C` (csrc/: CPU kernels, plus CUDA kernels when CUDA is usable or
FORCE_CUDA=1) is built as well; a failed build only prints a warning and the PyTorch ops are used.

Environment switches: GLIP_SKIP_EXTENSION=1 (do not build the extension), FORCE_CUDA=1 (build the CUDA kernels
without a GPU, e.g. for a given TORCH_CUDA_ARCH_LIST), GLIP_REQUIRE_EXTENSION=1 (a failed build is an error),
MAX_JOBS (parallel compile jobs).
"""
import os
import warnings
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
EXTENSION_NAME = "maskrcnn_benchmark._C"


def read_requirements() -> list:
    """Requirement ranges from requirements.txt."""
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def env_flag(name: str) -> bool:
    """True when the environment variable is set to 1/true/yes."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def sources(pattern: str) -> list:
    """Source files under csrc/ matching `pattern`, relative to this file, in a stable order."""
    return sorted(str(path.relative_to(HERE)) for path in (HERE / "csrc").glob(pattern))


def want_cuda(torch, cuda_home) -> bool:
    """Build the CUDA kernels when torch is a CUDA build, a toolkit is found, and a GPU is visible or FORCE_CUDA=1."""
    if torch.version.cuda is None or cuda_home is None:
        return False
    return env_flag("FORCE_CUDA") or torch.cuda.is_available()


def extension_setup() -> dict:
    """ext_modules and cmdclass for the optional extension; empty when it is skipped or torch is missing."""
    if env_flag("GLIP_SKIP_EXTENSION"):
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:
        warnings.warn(f"PyTorch is not importable at build time ({error}); building without {EXTENSION_NAME}.")
        return {}

    class OptionalBuildExtension(cpp_extension.BuildExtension):
        """BuildExtension whose failures are warnings (errors with GLIP_REQUIRE_EXTENSION=1)."""

        def build_extensions(self) -> None:
            """Build, turning a failure into a warning and an install without the extension."""
            try:
                super().build_extensions()
            except Exception as error:  # any compiler or toolchain failure must leave a working install
                if env_flag("GLIP_REQUIRE_EXTENSION"):
                    raise
                warnings.warn(
                    f"Could not build {EXTENSION_NAME} ({type(error).__name__}: {error}); "
                    "the PyTorch implementations of the ops will be used."
                )
                # Nothing was built: later steps (in-place or editable copies of the outputs) must not look for it.
                self.extensions = []

    compile_args = {"cxx": ["-O3"]}
    csrc = sources("*.cpp") + sources("cpu/*.cpp")
    extension_class = cpp_extension.CppExtension
    define_macros = []
    if want_cuda(torch, cpp_extension.CUDA_HOME):
        csrc += sources("cuda/*.cu")
        extension_class = cpp_extension.CUDAExtension
        define_macros.append(("WITH_CUDA", None))
        compile_args["nvcc"] = ["-O3"]
    extension = extension_class(
        EXTENSION_NAME,
        csrc,
        include_dirs=[str(HERE / "csrc")],
        define_macros=define_macros,
        extra_compile_args=compile_args,
    )
    cmdclass = {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}
    develop = develop_command()
    if develop is not None:
        cmdclass["develop"] = develop
    return {"ext_modules": [extension], "cmdclass": cmdclass}


def develop_command():
    """`setup.py develop` that first builds the extension in place, or None when setuptools has no develop.

    Recent setuptools implement develop as a pip editable install in an isolated environment without torch,
    which would skip the extension; building it in place beforehand keeps `python setup.py build develop` working.
    """
    try:
        from setuptools.command.develop import develop
    except ImportError:
        return None

    class DevelopWithExtension(develop):
        """develop preceded by build_ext --inplace."""

        def run(self) -> None:
            """Build the extension in place, then install in development mode."""
            self.reinitialize_command("build_ext", inplace=1)
            self.run_command("build_ext")
            super().run()

    return DevelopWithExtension


setup(
    name="maskrcnn_benchmark",
    version="0.1.0",
    description="GLIP (Grounded Language-Image Pre-training) for PyTorch, in the maskrcnn-benchmark layout",
    packages=find_packages(include=("maskrcnn_benchmark", "maskrcnn_benchmark.*")),
    package_data={"maskrcnn_benchmark.text": ["bert-base-uncased/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=read_requirements(),
    # --use-tensorboard only: pip install -e ".[tensorboard]"
    extras_require={"tensorboard": ["tensorboard>=2.10"],
                    # tools/export_onnx.py and ONNXRunner (the dynamo exporter needs onnxscript).
                    "export": ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"]},
    **extension_setup(),
)
