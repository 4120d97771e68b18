"""The command line: help that explains, errors as one line with exit code 1, results on stdout."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from covid19_cxr_dataset.cli import main

from loopback import LoopbackServer


@pytest.mark.parametrize("command", ["build", "plan", "manifests", "verify", "cite", "publish", "baseline", "audit"])
def test_every_command_explains_itself(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) > 5


def test_manifests_lists_release_1_0_0():
    result = CliRunner().invoke(main, ["manifests"])
    assert result.exit_code == 0
    assert "covid19-cxr 1.0.0" in result.output and "train 5,614" in result.output and "test 740" in result.output
    assert "  paper (default)\ttrain 5,614, test 740" in result.output and "  curated\ttrain " in result.output
    assert "builds as pinned" in result.output


def test_plan_and_build_through_the_cli(world, tmp_path):
    with LoopbackServer(dict(world.served)) as server:
        common = ["--manifest", str(world.manifest_dir), "--mirror", server.base_url, "--cache-dir", str(tmp_path / "cache"), "-q"]
        planned = CliRunner().invoke(main, ["plan", *common, "--json", str(tmp_path / "plan.json")])
        assert planned.exit_code == 0, planned.output
        assert "counts match the manifest" in planned.output
        files = json.loads((tmp_path / "plan.json").read_text())["files"]
        assert {f["excluded"] for f in files} >= {"", "view-lateral", "modality-not-xray"}
        built = CliRunner().invoke(main, ["build", *common, "--out", str(tmp_path / "out"), "--kaggle-archive", str(world.kaggle_zip)])
        assert built.exit_code == 0, built.output
        assert "train COVID-19 10  Normal 3  Pneumonia 4" in built.output
    verified = CliRunner().invoke(main, ["verify", str(tmp_path / "out")])
    assert verified.exit_code == 0 and "verified" in verified.output


def test_errors_are_one_line_with_exit_code_1(tmp_path):
    result = CliRunner().invoke(main, ["plan", "--version", "9.9.9"])
    assert result.exit_code == 1
    assert result.output.startswith("error: no manifest for covid19-cxr 9.9.9")
    assert "Traceback" not in result.output


def test_offline_without_cache_lists_what_is_missing(tmp_path):
    result = CliRunner().invoke(main, ["plan", "--version", "1.0.0", "--offline", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "metadata.csv" in result.output and "offline" in result.output.lower()


def _build_args(world, server, tmp_path, out="out"):
    return ["build", "--manifest", str(world.manifest_dir), "--mirror", server.base_url, "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / out), "--kaggle-archive", str(world.kaggle_zip), "--workers", "1"]


def test_a_build_shows_what_each_long_step_does_and_q_silences_it(world, tmp_path):
    with LoopbackServer(dict(world.served)) as server:
        shown = CliRunner().invoke(main, _build_args(world, server, tmp_path))
        quiet_after = CliRunner().invoke(main, [*_build_args(world, server, tmp_path, "out-q"), "-q"])
        quiet_before = CliRunner().invoke(main, ["-q", *_build_args(world, server, tmp_path, "out-qq")])
    assert shown.exit_code == 0, shown.output + shown.stderr
    for step in ("resolving tiny 0.0.1 from metadata", "download images", "hash the Kaggle archive",
                 "extract chest-xray-pneumonia.zip into the cache", "check extracted archive files", "convert and write shards",
                 "hash shards", "fingerprint (decode every image", "near duplicates across the split"):
        assert step in shown.stderr, step
    for quiet in (quiet_after, quiet_before):
        assert quiet.exit_code == 0, quiet.output + quiet.stderr
        assert quiet.stderr == ""  # no bar, no progress message
        assert "train COVID-19 10  Normal 3  Pneumonia 4" in quiet.stdout  # the results still print


def test_v_works_before_and_after_the_subcommand(tmp_path):
    import logging

    for args in (["-v", "manifests"], ["manifests", "-v"], ["manifests", "--verbose"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
        assert logging.getLogger("covid19_cxr_dataset.download").level == logging.DEBUG, args
    result = CliRunner().invoke(main, ["manifests"])
    assert logging.getLogger("covid19_cxr_dataset.download").level == logging.WARNING  # each invocation starts afresh
    for command in ("build", "plan", "verify", "publish", "cite", "audit", "baseline", "new-variant"):
        text = CliRunner().invoke(main, [command, "--help"]).output
        assert "-v, --verbose" in text and "-q, --quiet" in text, command
