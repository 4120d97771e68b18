"""README's two commands are the ones that work: .ci/run runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _commands_under(heading: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_ci_runs_the_readme_test_commands_in_order():
    (block,) = _commands_under("Run the tests")
    commands = [line.strip() for line in block.splitlines() if line.strip()]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert len(commands) >= 2 and all(command in ci for command in commands)
    assert [ci.index(command) for command in commands] == sorted(ci.index(command) for command in commands)


def test_readme_main_command_builds_the_first_release():
    (command,) = _commands_under("Build the dataset (the main job)")
    assert command.startswith("pip install . && cxr-dataset build --version 1.0.0 --out ")


# No loopback mirror can serve files that match release 1.0.0's pins without the real files, so in
# the tier that has none the README's command runs with the synthetic manifest standing in for
# `--version 1.0.0`; every other argument is the README's, verbatim. With the real fixtures
# (COVID19_CXR_REAL_FIXTURES), test_readme_main_command_on_release_1_0_0_then_the_commands_its_error_prints
# runs the command on the release itself.
RELEASE_STAND_IN = ("--version", "1.0.0")


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_readme_main_command_builds_against_a_loopback_mirror(world, tmp_path, monkeypatch):
    import shlex
    import shutil

    import datasets
    from click.testing import CliRunner

    from covid19_cxr_dataset import CLASS_NAMES
    from covid19_cxr_dataset.cli import main
    from loopback import LoopbackServer
    from synthetic import EXPECTED

    (command,) = _commands_under("Build the dataset (the main job)")
    install, build_line = command.split(" && ")
    assert install == "pip install ."
    program, *args = shlex.split(build_line)
    assert program == "cxr-dataset" and args[0] == "build"
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


def _fixture_kaggle_archive(path: Path, kaggle_fixtures: Path, release) -> int:
    """A Kaggle archive (chest_xray/<split>/<CLASS>/<file>) of the real Kaggle files in the fixtures
    that the release lists, each with the bytes it pins (or listed without a pin); returns how many.
    Every other file the release lists is absent from it, as from an incomplete download."""
    import hashlib
    import zipfile

    from covid19_cxr_dataset.sources import read_kaggle_files

    listed = read_kaggle_files(release.file(release.source("kaggle")["files"]))
    pins = {(r.split, r["class"], r.filename): r.sha256 for _, r in listed.iterrows()}
    added = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for image in sorted((kaggle_fixtures / "chest_xray").rglob("*.jpeg")):
            key = (image.parent.parent.name, image.parent.name, image.name)
            if key in pins and pins[key] in ("", hashlib.sha256(image.read_bytes()).hexdigest()):
                archive.write(image, "chest_xray/" + "/".join(key))
                added += 1
    return added


@pytest.mark.real
def test_readme_main_command_on_release_1_0_0_then_the_commands_its_error_prints(real_fixtures, tmp_path, monkeypatch):
    """The README's command verbatim (--version 1.0.0) against a loopback mirror of the real fixtures and
    a Kaggle archive of the real Kaggle fixture files: the fixtures hold only some of the pinned files,
    so the build fails once, writing nothing to --out and naming every file it could not get, and the
    variant commands it prints (new-variant --exclude-missing, then build) give a release that verifies
    and loads, whose card says it is not release 1.0.0."""
    import shlex

    import datasets
    from click.testing import CliRunner

    from covid19_cxr_dataset import manifest as manifest_module
    from covid19_cxr_dataset.cli import main
    from covid19_cxr_dataset.missing import read_missing_report
    from covid19_cxr_dataset.release import read_row_table
    from loopback import LoopbackServer
    from test_release_1_0_0_real import _serve

    release = manifest_module.load(manifest_module.find("1.0.0"))
    (command,) = _commands_under("Build the dataset (the main job)")
    program, *args = shlex.split(command.split(" && ")[1])
    assert program == "cxr-dataset" and args[:3] == ["build", "--version", "1.0.0"]
    monkeypatch.chdir(tmp_path)
    in_archive = _fixture_kaggle_archive(tmp_path / _option(args, "--kaggle-archive"), real_fixtures / "kaggle", release)
    assert in_archive >= 20, "the real fixtures should carry the Kaggle files the release pins"
    with LoopbackServer(_serve(real_fixtures, release)) as server:
        extra = ["--mirror", server.base_url, "--cache-dir", str(tmp_path / "cache"), "-q", "--workers", "2"]
        first = CliRunner().invoke(main, [*args, *extra])
        assert first.exit_code == 1, first.output
        out = Path(_option(args, "--out"))
        assert not out.exists() and "could not be fetched" in first.output
        missing = read_missing_report(Path(f"{out}.missing-files.csv"))
        missing_ids = {f"{row['source']}:{row['source_path']}" for row in missing}
        # every pinned file the mirror and the archive lack is named, and none that they hold
        held = {f"{name}:images/{image.name}" for name in ("cohen", "figure1", "actualmed")
                for image in (real_fixtures / name / "images").iterdir()}
        assert {row["source"] for row in missing} == {"cohen", "figure1", "actualmed", "kaggle"}
        assert missing_ids and not missing_ids & held
        printed = [line.strip() for line in first.output.splitlines() if line.strip().startswith("cxr-dataset ")]
        make = next(line for line in printed if line.startswith("cxr-dataset new-variant --from 1.0.0 "))
        build = next(line for line in printed if line.startswith("cxr-dataset build --manifest"))
        for line in (make, build):  # exactly what the error told the user to type (the cache and mirror included)
            result = CliRunner().invoke(main, shlex.split(line)[1:] + ["-q"])
            assert result.exit_code == 0, (line, result.output)
    variant_out = Path(_option(shlex.split(build), "--out"))
    verified = CliRunner().invoke(main, ["verify", str(variant_out), "--workers", "2"])
    assert verified.exit_code == 0, verified.output
    rows = read_row_table(variant_out)
    built_ids = set(rows["source"] + ":" + rows["source_path"])
    assert built_ids and not built_ids & missing_ids
    assert (rows["source"] == "kaggle").sum() == in_archive  # every archived Kaggle file the release keeps
    loaded = datasets.load_dataset(str(variant_out))
    curated = datasets.load_dataset(str(variant_out), "curated")
    assert set(loaded) == set(curated) == {"train", "test"}
    assert sum(len(loaded[s]) for s in loaded) == len(rows)
    card = (variant_out / "README.md").read_text()
    assert "> **Not release 1.0.0: the counts differ.**" in card
