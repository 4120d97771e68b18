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


# Release 1.0.0 does not build as pinned yet (README, "Status of release 1.0.0"), and no loopback
# mirror can serve files that match its git blob pins without the real files. Until both hold, the
# README's command runs with the synthetic manifest standing in for `--version 1.0.0`; every other
# argument is the README's, verbatim. To run it on the release itself, set RELEASE_STAND_IN = None
# and serve the real pinned files (tests/test_release_1_0_0_real.py's _serve) instead of the world.
RELEASE_STAND_IN = ("--version", "1.0.0")


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_readme_main_command_builds_against_a_loopback_mirror(tmp_path, monkeypatch):
    import shlex
    import shutil

    import datasets
    from click.testing import CliRunner

    from covid19_cxr_dataset import CLASS_NAMES
    from covid19_cxr_dataset.cli import main
    from loopback import LoopbackServer
    from synthetic import EXPECTED, make_world

    (command,) = _commands_under("Build the dataset (the main job)")
    install, build_line = command.split(" && ")
    assert install == "pip install ."
    program, *args = shlex.split(build_line)
    assert program == "cxr-dataset" and args[0] == "build"
    world = make_world(tmp_path / "world")
    monkeypatch.chdir(tmp_path)
    # A synthetic Kaggle zip under the README's own name, same layout as Kaggle's (chest_xray/<split>/<CLASS>/).
    shutil.copy(world.kaggle_zip, tmp_path / _option(args, "--kaggle-archive"))
    if RELEASE_STAND_IN is not None:
        at = args.index(RELEASE_STAND_IN[0])
        assert args[at:at + 2] == list(RELEASE_STAND_IN), "the README's command no longer names release 1.0.0"
        args[at:at + 2] = ["--manifest", str(world.manifest_dir)]
    with LoopbackServer(dict(world.served)) as server:
        result = CliRunner().invoke(main, [*args, "--mirror", server.base_url, "--cache-dir", str(tmp_path / "cache"), "-q"])
    assert result.exit_code == 0, result.output
    out = _option(args, "--out")
    assert f"wrote {Path(out)}" in result.output
    loaded = datasets.load_dataset(out)
    for split, per_class in EXPECTED.items():
        labels = loaded[split]["label"]
        assert {name: labels.count(i) for i, name in enumerate(CLASS_NAMES)} == per_class
