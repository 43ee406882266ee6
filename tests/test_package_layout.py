"""Package layering (lower subpackages never import higher ones) and the packaging of the shipped tokenizer files."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "maskrcnn_benchmark"

# Subpackage -> the subpackages above it, which it must not import (at module level or inside a function).
FORBIDDEN_IMPORTS = {
    "utils": ("layers", "modeling", "data", "engine"),
    "layers": ("modeling", "data", "engine"),
    "text": ("modeling", "data", "engine"),
    "data": ("modeling", "engine"),
}


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of the maskrcnn_benchmark modules a source file imports (relative imports resolved)."""
    package_parts = ["maskrcnn_benchmark", *path.relative_to(PACKAGE).parts[:-1]]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package_parts[: len(package_parts) - node.level + 1]
            names.append(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return [name for name in names if name.startswith("maskrcnn_benchmark.")]


@pytest.mark.parametrize("subpackage", sorted(FORBIDDEN_IMPORTS))
def test_subpackage_imports_nothing_above_it(subpackage):
    forbidden = tuple(f"maskrcnn_benchmark.{name}" for name in FORBIDDEN_IMPORTS[subpackage])
    sources = sorted((PACKAGE / subpackage).rglob("*.py"))
    assert sources, f"no Python files under maskrcnn_benchmark/{subpackage}"
    violations = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sources
        for name in _imported_modules(path)
        if name in forbidden or name.startswith(tuple(f"{prefix}." for prefix in forbidden))
    ]
    assert violations == []


def test_relative_imports_resolve_to_the_package():
    resolved = _imported_modules(PACKAGE / "layers" / "nms.py")
    assert "maskrcnn_benchmark.layers.dispatch" in resolved


def test_built_package_ships_the_tokenizer_files(tmp_path):
    """setup.py's package_data puts the shipped vocabulary and config next to maskrcnn_benchmark.text."""
    # egg_info writes its file list under tmp_path too, so that the checkout stays clean.
    command = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
               "build_py", "--build-lib", str(tmp_path / "lib")]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    shipped = tmp_path / "lib" / "maskrcnn_benchmark" / "text" / "bert-base-uncased"
    assert sorted(path.name for path in shipped.iterdir()) == sorted(
        path.name for path in (PACKAGE / "text" / "bert-base-uncased").iterdir()
    )
    assert (shipped / "vocab.txt").read_bytes() == (PACKAGE / "text" / "bert-base-uncased" / "vocab.txt").read_bytes()
