"""The ``cxr-dataset`` command line. It parses arguments and calls the library, nothing more."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import CxrDatasetError


def _fail_cleanly(command):
    """Turn the project's own errors into one readable line and exit code 1 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CxrDatasetError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written to the output folder; the download cache keeps verified files", err=True)
            sys.exit(130)

    return wrapper


def _manifest(version: str | None, manifest_path: Path | None, name: str):
    from . import manifest

    if manifest_path is not None:
        return manifest.load(manifest_path)
    if version is None:
        releases = manifest.available()
        if not releases:
            raise CxrDatasetError("no manifests found; pass --manifest PATH")
        version = [v for n, v, _ in releases if n == name][-1]
    return manifest.load(manifest.find(version, name))


def _options(cache_dir, mirror, offline, workers, quiet, kaggle_archive=None, overwrite=False):
    from .build import Options

    return Options(
        cache_dir=cache_dir, mirror=mirror, offline=offline, workers=workers or (os.cpu_count() or 1),
        progress=not quiet, kaggle_archive=kaggle_archive, overwrite=overwrite,
    )


def _release_options(command):
    """The options every command that reads a manifest and its sources shares."""
    decorators = [
        click.option("--version", "version", metavar="VERSION", help="Release to use (see `cxr-dataset manifests`); default: the newest."),
        click.option("--manifest", "manifest_path", type=click.Path(exists=True, path_type=Path),
                     help="A manifest folder (or its manifest.yaml) instead of a bundled release: for your own variants."),
        click.option("--name", default="covid19-cxr", show_default=True, help="Dataset name under builder_manifests/."),
        click.option("--cache-dir", type=click.Path(path_type=Path), envvar="COVID19_CXR_CACHE",
                     help="Download cache. [default: $COVID19_CXR_CACHE or ~/.cache/covid19-cxr-dataset]"),
        click.option("--mirror", metavar="URL", help="Base URL replacing https://raw.githubusercontent.com (institutional mirror; same <owner>/<repo>/<commit>/<path> layout)."),
        click.option("--offline", is_flag=True, help="Use only the cache; fail listing every file that is missing."),
        click.option("--workers", type=click.IntRange(1, 256), help="Parallel workers for download and conversion. [default: all cores]"),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cxr-dataset")
@click.option("--verbose", "-v", is_flag=True, help="Log every file downloaded and verified.")
def main(verbose):
    """Rebuild, check and cite the COVID-19 chest X-ray dataset of Zhong (arXiv 2007.09695).

    \b
    Typical use:
      cxr-dataset manifests                        # releases you can build
      cxr-dataset plan --version 1.0.0             # counts and exclusions, no image downloads
      cxr-dataset build --version 1.0.0 --out ./covid19-cxr-1.0.0 --kaggle-archive archive.zip
      python -c "import datasets; print(datasets.load_dataset('./covid19-cxr-1.0.0'))"
    """
    # Only this package's messages: other libraries' INFO chatter (datasets, TF) stays quiet.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_log = logging.getLogger("covid19_cxr_dataset")
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    logging.getLogger("covid19_cxr_dataset.download").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        package_log.setLevel(logging.DEBUG)


@main.command()
@_fail_cleanly
def manifests():
    """List the releases this package can build."""
    from . import manifest

    for name, version, folder in manifest.available():
        loaded = manifest.load(folder)
        counts = loaded.data["expected_counts"]
        total = {split: sum(per_class.values()) for split, per_class in counts.items()}
        click.echo(f"{name} {version}\t{loaded.data['title']}\t" + ", ".join(f"{s} {n:,}" for s, n in total.items()))


@main.command()
@_release_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (created only when the build succeeds).")
@click.option("--kaggle-archive", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The Kaggle chest-xray-pneumonia zip, downloaded by hand (otherwise the Kaggle API with KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only after the new build succeeded).")
@_fail_cleanly
def build(version, manifest_path, name, cache_dir, mirror, offline, workers, quiet, out, kaggle_archive, overwrite):
    """Build a release into a Hugging Face dataset folder (parquet shards + card + build report).

    Downloads every pinned file (cached and verified), filters, converts each image to one
    normalized grayscale JPEG, splits, and checks the counts the manifest expects. The output
    folder appears only when everything succeeded; a failed build leaves nothing behind.
    """
    from .build import build as run_build

    manifest = _manifest(version, manifest_path, name)
    options = _options(cache_dir, mirror, offline, workers, quiet, kaggle_archive, overwrite)
    result = run_build(manifest, out, options)
    click.echo(_summary(result))
    click.echo(f"wrote {out}  (load it with datasets.load_dataset({str(out)!r}))")


def _summary(result: dict) -> str:
    lines = [f"{result['dataset']} {result['version']}: fingerprint {result['fingerprint'][:16]}…"]
    for split, per_class in result["counts"].items():
        lines.append(f"  {split:5s} " + "  ".join(f"{label} {n:,}" for label, n in per_class.items()) + f"  (total {sum(per_class.values()):,})")
    lines.append("  excluded: " + ", ".join(f"{reason} {n:,}" for reason, n in result["exclusions_by_reason"].items()))
    checks = result["checks"]
    lines.append(
        f"  checks: patients in both splits {len(checks['patients_in_both_splits'])}, near-duplicate pairs across splits "
        f"{len(checks['near_duplicate_pairs_across_splits'])}, unverified files {checks['unverified_files']}"
    )
    return "\n".join(lines)


@main.command()
@_release_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every candidate file with its source, path, label and split or exclusion reason.")
@_fail_cleanly
def plan(version, manifest_path, name, cache_dir, mirror, offline, workers, quiet, json_path):
    """Resolve a release from metadata and pinned lists alone (no image downloads).

    Prints the per-split, per-class and per-source counts and the exclusions by reason, and says
    whether they match the counts the manifest expects.
    """
    from . import report
    from .build import check_counts, plan as run_plan

    manifest = _manifest(version, manifest_path, name)
    resolution = run_plan(manifest, _options(cache_dir, mirror, offline, workers, quiet))
    kept, excluded = resolution.kept, resolution.excluded
    click.echo(f"{manifest.name} {manifest.version}: {len(resolution.candidates):,} candidate files, {len(kept):,} kept")
    for split, per_class in report.count_table(kept).items():
        click.echo(f"  {split:5s} " + "  ".join(f"{label} {n:,}" for label, n in per_class.items()) + f"  (total {sum(per_class.values()):,})")
    click.echo("  by source:")
    for split, per_source in report.source_label_table(kept).items():
        for source, per_label in sorted(per_source.items()):
            click.echo(f"    {split:5s} {source:10s} " + "  ".join(f"{label} {n:,}" for label, n in per_label.items()))
    click.echo("  excluded by reason:")
    for reason, n in report.exclusion_summary(excluded).items():
        click.echo(f"    {reason:24s} {n:,}")
    problems = check_counts(manifest, kept)
    click.echo("  counts match the manifest" if not problems else "  COUNTS DIFFER: " + "; ".join(problems))
    if json_path:
        rows = [
            {"source": r.source, "source_path": r.source_path, "label": r.label, "patient_id": r.patient_id, "split": r.split, "excluded": ""}
            for r in kept.itertuples()
        ] + [
            {"source": r.source, "source_path": r.source_path, "label": r.label, "patient_id": r.patient_id, "split": "",
             "excluded": r.reason, "detail": r.detail}
            for r in excluded.itertuples()
        ]
        json_path.write_text(json.dumps({"dataset": manifest.name, "version": manifest.version, "files": rows}, indent=1) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_path} ({len(rows):,} files)")
    if problems:
        sys.exit(2)


@main.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A built release folder (what `cxr-dataset build` wrote).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the certificate (JSON, Markdown summary, confusion-matrix and curve PNGs).")
@click.option("--recipe", default="paper", show_default=True,
              help="A recipe name (baseline/recipes/<name>.yaml) or a path to a recipe YAML file.")
@click.option("--epochs", type=click.IntRange(1), help="Override the recipe's epochs (a quick check; the verdict then says so).")
@click.option("--batch-size", type=click.IntRange(1), help="Override the recipe's batch size.")
@click.option("--image-size", type=click.IntRange(16), help="Override the recipe's input size.")
@click.option("--seed", type=int, default=None, help="Random seed (default: the recipe package's fixed seed).")
@click.option("--mixed-precision", is_flag=True, help="float16 compute on a GPU (numbers may differ slightly).")
@click.option("--no-verify", is_flag=True, help="Skip recomputing the release fingerprint before training.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch progress.")
@click.option("--pipeline", type=click.Choice(["auto", "resident", "cached"]), default="auto", show_default=True,
              help="resident: training images kept and augmented on the device; cached: fed from host memory "
                   "by tf.data; auto: resident on a GPU, cached on a CPU.")
@click.option("--jit-compile", is_flag=True,
              help="Compile the train step with XLA (faster on a GPU). Turns TensorFlow's op determinism off "
                   "(XLA has no deterministic MaxPool gradient): reruns may differ slightly.")
@_fail_cleanly
def baseline(data_dir, out, recipe, epochs, batch_size, image_size, seed, mixed_precision, no_verify, quiet,
             pipeline, jit_compile):
    """Certify a release: train and evaluate the paper's DCNN on it, compare with the paper.

    Needs TensorFlow: pip install 'covid19-cxr-dataset[baseline]'. Uses the GPU when TensorFlow
    sees one. Writes certificate.json, certificate.md, predictions.csv and PNG plots to --out.
    Exit code 0 when the verdict is pass, review or no-reference; 3 when it is fail.
    """
    from .baseline import DEFAULT_SEED, run_baseline

    certificate = run_baseline(
        data_dir, out, recipe=recipe, epochs=epochs, batch_size=batch_size, image_size=image_size,
        seed=DEFAULT_SEED if seed is None else seed, mixed_precision=mixed_precision,
        verify_fingerprint=not no_verify, progress=not quiet,
        pipeline=pipeline, jit_compile=jit_compile, deterministic=not jit_compile,
    )
    accuracy = certificate.get("metrics", {}).get("accuracy")
    verdict = certificate.get("verdict")
    click.echo(f"accuracy {accuracy:.4f}" if isinstance(accuracy, float) else "accuracy: see certificate.json")
    click.echo(f"verdict: {verdict} (against the paper's figures; see certificate.md)")
    click.echo(f"wrote {out}")
    if verdict == "fail":
        sys.exit(3)  # a release whose certificate fails must not pass a release pipeline


@main.command()
@click.option("--version", "version", metavar="VERSION", help="Release to cite (see `cxr-dataset manifests`); default: the newest.")
@click.option("--manifest", "manifest_path", type=click.Path(exists=True, path_type=Path),
              help="A manifest folder (or its manifest.yaml) instead of a bundled release.")
@click.option("--name", default="covid19-cxr", show_default=True, help="Dataset name under builder_manifests/.")
@click.option("--format", "fmt", type=click.Choice(["bibtex", "apa", "cff"]), default="bibtex", show_default=True,
              help="BibTeX entries, APA references, or a CITATION.cff (CFF 1.2.0) for the release.")
@_fail_cleanly
def cite(version, manifest_path, name, fmt):
    """Print how to cite a release: the release itself, then every work it is built from."""
    from .citation import format_citations

    click.echo(format_citations(_manifest(version, manifest_path, name), fmt), nl=False)


@main.command("verify")
@click.argument("release_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(1, 256), help="Parallel workers for hashing and decoding. [default: all cores]")
@_fail_cleanly
def verify_command(release_dir, workers):
    """Check a release folder against its build_report.json.

    Checks every shard's sha256 and size, that no other shard is there, the fingerprint over decoded
    pixels and labels, the counts per split and class, and the card's class labels. Exit code 0: the
    release is intact; 1: it is not (every problem is named with its file, expected and found value).
    """
    from .verify import require_verified

    click.echo(require_verified(release_dir, workers=workers or os.cpu_count() or 1).summary())


@main.command("publish")
@click.argument("release_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, metavar="ORG/NAME", help="Hugging Face dataset repository (created if missing).")
@click.option("--dry-run", is_flag=True, help="Verify, then list every file that would be uploaded (size, sha256); upload nothing.")
@click.option("--private", is_flag=True, help="Create the repository as private (an existing one keeps its visibility).")
@click.option("--revision", metavar="BRANCH",
              help="Branch to upload to. [default: release-<version>]; `main` also makes it what the Hub shows by default.")
@click.option("--workers", type=click.IntRange(1, 256), help="Parallel workers for verification. [default: all cores]")
@_fail_cleanly
def publish_command(release_dir, repo_id, dry_run, private, revision, workers):
    """Upload a verified release to the Hugging Face Hub and tag it v<version>.

    \b
    Verifies the folder first and refuses a release that fails. Uploads README.md, build_report.json
    and the shards to branch release-<version>, checks the commit, then tags it v<version>, so
    datasets.load_dataset("ORG/NAME", revision="v<version>") loads exactly this release.
    Token: $HF_TOKEN or `hf auth login` (no command-line option, so it stays out of shell history).
    Needs: pip install 'covid19-cxr-dataset[publish]' (not for --dry-run).
    """
    from .hub import publish_release

    plan = publish_release(release_dir, repo_id, dry_run=dry_run, private=private, revision=revision,
                           workers=workers or os.cpu_count() or 1)
    click.echo(plan.summary())


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write every image's result to this CSV.")
@click.option("--all", "show_all", is_flag=True, help="Print every image, not only the proposed ones.")
@click.option("--workers", type=click.IntRange(1, 256), help="Parallel workers. [default: all cores]")
@_fail_cleanly
def audit(paths, csv_path, show_all, workers):
    """Propose images with drawn lesion marks (arrows, circles, boxes, lesion text) for review.

    PATHS are image files or folders (searched for .jpg, .jpeg and .png). The detector looks for
    local saturated-colour strokes and tells them from coloured scanner text and tinted photos of
    film; it only PROPOSES: a maintainer looks at each proposal and records the decision in the
    manifest's decisions/annotations.csv (see docs/MANIFEST.md and docs/curation-1.0.0.md).
    """
    from .audit import audit_paths

    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        else:
            files.append(path)
    table = audit_paths(files, workers=workers or os.cpu_count() or 1)
    proposed = table[table["reason"] != ""]
    for row in (table if show_all else proposed).itertuples():
        click.echo(f"{row.score:6.2f}  {row.reason or '-':20s} {row.flags:30s} {row.path}")
    click.echo(f"{len(proposed)} of {len(table)} image(s) proposed for review", err=True)
    if csv_path:
        table.to_csv(csv_path, index=False)
        click.echo(f"wrote {csv_path}", err=True)


@main.group()
def lock():
    """Maintainer tools: write a release's pins (never needed to build a release)."""


@lock.command("github")
@click.option("--manifest", "manifest_path", type=click.Path(exists=True, path_type=Path), required=True, help="The manifest folder to pin.")
@click.option("--source", "source_name", required=True, help="The GitHub source to pin (its name in the manifest).")
@click.option("--tree", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The repository's tree at the pinned commit: path<TAB>git_blob_sha1<TAB>size (git ls-tree -r -l).")
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The source's metadata table at the pinned commit.")
@_fail_cleanly
def lock_github(manifest_path, source_name, tree, metadata):
    """Write a GitHub source's lock file: the metadata table and every image it names, by git blob id."""
    from . import locks, manifest

    loaded = manifest.load(manifest_path)
    source = loaded.source(source_name)
    rows = locks.github_lock_rows(loaded, source, tree, metadata)
    target = loaded.folder / source["lock"]
    locks.write_github_lock(target, rows)
    click.echo(f"wrote {target}: {len(rows):,} pinned files")


@lock.command("kaggle")
@click.option("--manifest", "manifest_path", type=click.Path(exists=True, path_type=Path), required=True, help="The manifest folder to pin.")
@click.option("--kaggle-archive", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The Kaggle archive the release is built from.")
@_fail_cleanly
def lock_kaggle(manifest_path, kaggle_archive):
    """Record the sha256 of every listed Kaggle file from the archive, so later builds verify them."""
    from . import locks, manifest

    loaded = manifest.load(manifest_path)
    source = next((s for s in loaded.sources if s["kind"] == "kaggle"), None)
    if source is None:
        raise CxrDatasetError(f"{loaded.path} has no kaggle source")
    recorded, missing = locks.record_kaggle_checksums(loaded, source, kaggle_archive)
    click.echo(f"recorded {recorded:,} sha256 in {loaded.file(source['files'])}")
    if missing:
        raise CxrDatasetError(f"{len(missing)} listed file(s) are not in {kaggle_archive}, e.g. {missing[0]}; is it the pinned version?")
