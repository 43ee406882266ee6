"""Install the maskrcnn_benchmark package (GLIP). No compiler is needed: every op has a PyTorch implementation."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_requirements() -> list:
    """Requirement ranges from requirements.txt."""
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="maskrcnn_benchmark",
    version="0.1.0",
    description="GLIP (Grounded Language-Image Pre-training) for PyTorch, in the maskrcnn-benchmark layout",
    packages=find_packages(include=("maskrcnn_benchmark", "maskrcnn_benchmark.*")),
    package_data={"maskrcnn_benchmark.modeling.language_backbone": ["bert-base-uncased/*"]},
    include_package_data=True,
    python_requires=">=3.9",
    install_requires=read_requirements(),
)
