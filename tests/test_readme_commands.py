"""The README's set-up and test commands are what CI runs: .ci/run runs exactly them, and the set-up command
installs what the test command needs and builds the compiled kernels."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def first_bash_block(markdown: str, heading: str) -> list:
    """The command lines of the first ```bash block under the `## heading` section."""
    section = markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def ci_commands(script: str) -> list:
    """The commands of .ci/run besides comments, shell options, the cd to the repository and exported settings."""
    lines = [line.strip() for line in script.splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "set ", "cd ", "export "))]


def test_ci_runs_exactly_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    setup, tests = first_bash_block(readme, "Set-up"), first_bash_block(readme, "Tests")
    assert len(setup) == 1 and len(tests) == 1, (setup, tests)
    assert ci_commands((REPO / ".ci" / "run").read_text()) == setup + tests


def test_setup_command_installs_pytest_and_builds_the_extension():
    setup, = first_bash_block((REPO / "README.md").read_text(), "Set-up")
    tests, = first_bash_block((REPO / "README.md").read_text(), "Tests")
    assert tests.startswith("python -m pytest")
    installs = setup.split("&&")
    assert "pytest" in installs[0].split()
    # pip's isolated build environment has no torch, and setup.py then builds no extension.
    assert "--no-build-isolation" in installs[-1].split()
