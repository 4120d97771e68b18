"""README's two commands are the ones that work: .ci/run runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands_under(heading: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_ci_runs_the_readme_test_command():
    (command,) = _commands_under("Run the tests")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command.strip() in [line.strip() for line in ci]


def test_readme_main_command_builds_the_first_release():
    (command,) = _commands_under("Build the dataset (the main job)")
    assert command.startswith("pip install . && cxr-dataset build --version 1.0.0 --out ")
