"""The ``cxr-dataset`` command line: click commands that parse arguments, call the library and print what it returns.

What a command prints beyond a line or two comes from the library (``plan.summary_lines``, ``report.summary``,
``missing.missing_table``), so everything a command does is also a Python call."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from . import __version__, cli_verbosity, progress
from .cli_options import (
    FINGERPRINT_OPTION, check_baseline_inputs, check_files as check_files_report, command_options, default_missing_report,
    fail_cleanly, load_manifest, output_file, pin_status, release_options,
)
from .errors import CxrDatasetError


@click.group(cls=cli_verbosity.Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cxr-dataset")
@click.option("--verbose", "-v", is_flag=True, help=cli_verbosity.VERBOSE_HELP)
@click.option("--quiet", "-q", is_flag=True, help=cli_verbosity.QUIET_HELP)
def main(verbose, quiet):
    """Rebuild, check and cite the COVID-19 chest X-ray dataset of Zhong (arXiv 2007.09695).

    \b
    Typical use:
      cxr-dataset manifests                        # releases you can build
      cxr-dataset plan --version 1.0.0             # counts and exclusions, no image downloads
      cxr-dataset build --version 1.0.0 --out ./covid19-cxr-1.0.0 --kaggle-archive archive.zip
      python -c "import datasets; print(datasets.load_dataset('./covid19-cxr-1.0.0'))"
    """
    cli_verbosity.configure_logging(verbose=verbose, quiet=quiet)  # each command also takes -v/-q after its name


@main.command()
@fail_cleanly
def manifests():
    """List the releases this package can build, with their configurations.

    A release "builds as pinned" when every source is pinned (GitHub commits with locks, the Kaggle
    file list) and every configuration declares expected counts; Kaggle files without a recorded
    sha256 are counted (the build reports them as unverified).
    """
    from . import manifest

    for name, version, folder in manifest.available():
        try:
            loaded = manifest.load(folder)
        except CxrDatasetError as error:
            click.echo(f"{name} {version}\tdoes not load: {error}")
            continue
        if (loaded.name, loaded.version) != (name, version):
            click.echo(f"{name} {version}\tskipped: {loaded.path} describes {loaded.name} {loaded.version}; a folder under "
                       f"{manifest.manifests_root()} is <name>/<version> of the release it holds. Move it out and pass it "
                       "with --manifest DIR")
            continue
        click.echo(f"{name} {version}\t{loaded.title}\t{pin_status(loaded)}")
        for config in loaded.configs:
            total = {split: sum(per_class.values()) for split, per_class in config.expected_counts.items()}
            click.echo(f"  {config.name}{' (default)' if config.default else ''}\t"
                       + ", ".join(f"{s} {n:,}" for s, n in total.items()))


@main.command()
@release_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (created only when the build succeeds).")
@click.option("--kaggle-archive", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The Kaggle chest-xray-pneumonia zip, downloaded by hand (otherwise the Kaggle API with KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only after the new build succeeded).")
@fail_cleanly
def build(version, manifest_path, name, cache_dir, mirror, offline, workers, quiet, out, kaggle_archive, overwrite):
    """Build a release into a Hugging Face dataset folder (parquet shards + card + build report).

    Downloads every pinned file (cached and verified), filters, converts each image to one
    normalized grayscale JPEG, splits, and checks the counts the manifest expects. The output
    folder appears only when everything succeeded; a failed build leaves nothing behind.
    """
    from .build import build as run_build
    from .report import summary as report_summary

    manifest = load_manifest(version, manifest_path, name)
    options = command_options(cache_dir, mirror, offline, workers, quiet, kaggle_archive, overwrite)
    result = run_build(manifest, out, options)
    # The release is in place: a Ctrl-C from here on undoes nothing, so it must not fail the command (the
    # program's handlers ignore signals from now on: interrupts.work_complete; this covers library use).
    with contextlib.suppress(KeyboardInterrupt):
        click.echo(report_summary(result))
        click.echo(f"wrote {out}  (load it with datasets.load_dataset({str(out)!r}))")


@main.command()
@release_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every candidate file with its source, path, label and split or exclusion reason.")
@click.option("--check-files", is_flag=True,
              help="Also ask the server (HEAD requests, nothing downloaded) whether every file a build would download is there.")
@click.option("--missing-report", type=click.Path(dir_okay=False, path_type=Path),
              help="With --check-files: where to write the unreachable files. [default: ./<name>-<version>.missing-files.csv, "
                   "written only when some are]")
@click.option("--check-deadline", type=click.FloatRange(min=1), default=120.0, show_default=True, metavar="SECONDS",
              help="With --check-files: seconds for all the files together; a server silent past it is an error, not missing files.")
@fail_cleanly
def plan(version, manifest_path, name, cache_dir, mirror, offline, workers, quiet, json_path, check_files, missing_report, check_deadline):
    """Resolve a release from metadata and pinned lists alone (no image downloads).

    Prints the per-split, per-class and per-source counts and the exclusions by reason, and says
    whether they match the counts the manifest expects. With --check-files, also says which pinned
    files the server (or --mirror) holds, and writes the list of the others for
    `cxr-dataset new-variant --exclude-missing`. Exit code 2: the counts differ, or files are unreachable.
    """
    from .naming import shown_path
    from .plan import plan as run_plan, plan_document, summary_lines
    from .staging import write_output_file

    manifest = load_manifest(version, manifest_path, name)
    options = command_options(cache_dir, mirror, offline, workers, quiet)
    # The files it will write are checked before the work (never inside a manifest folder or the cache).
    json_path = output_file(json_path, "--json", manifest, options) if json_path else None
    report_path = output_file(missing_report or default_missing_report(manifest), "--missing-report", manifest, options) \
        if check_files else None
    resolution = run_plan(manifest, options)
    lines, all_problems = summary_lines(resolution)
    for line in lines:
        click.echo(line)
    if json_path:
        plan_json = plan_document(resolution)
        write_output_file(json_path, json.dumps(plan_json, indent=1) + "\n", option="--json")
        click.echo(f"wrote {shown_path(json_path)} ({len(plan_json['files']):,} files)")
    unreachable = check_files_report(manifest, resolution, options, report_path, check_deadline) if check_files else []
    if all_problems or unreachable:
        sys.exit(2)


@main.command("new-variant")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--from", "base", required=True, metavar="VERSION|PATH",
              help="The release to start from: a bundled version (see `cxr-dataset manifests`) or a manifest folder.")
@click.option("--exclude-missing", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="REPORT",
              help="A missing-files report (what a failed `build` or `plan --check-files` wrote): exclude those files "
                   "(except those --accept-hashes takes).")
@click.option("--accept-hashes", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="REPORT",
              help="A missing-files report whose files differ from their pinned sha256 (status sha256-mismatch): record "
                   "the hashes of the files you hold as a documented deviation (decisions/accepted-hashes.csv).")
@click.option("--new-version", metavar="VERSION", help="The variant's version. [default: the next <from>+local.N]")
@click.option("--name", default="covid19-cxr", show_default=True, help="Dataset name under builder_manifests/ (with a --from version).")
@click.option("--cache-dir", type=click.Path(path_type=Path), envvar="COVID19_CXR_CACHE",
              help="Download cache (the metadata tables plan reads). [default: $COVID19_CXR_CACHE or ~/.cache/covid19-cxr-dataset]")
@click.option("--mirror", metavar="URL", help="Base URL replacing https://raw.githubusercontent.com (for the metadata tables).")
@click.option("--offline", is_flag=True, help="Use only the cache.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@fail_cleanly
def new_variant(folder, base, exclude_missing, accept_hashes, new_version, name, cache_dir, mirror, offline, quiet):
    """Start a local variant of a release in DIR (a new manifest folder you can build and cite).

    \b
    The copy keeps the release's pins, decisions and split seed and gets:
      - a PEP 440 local version (1.0.0+local.1), a title and notes that say it derives from the release;
      - with --exclude-missing, the files a build could not download as exclusions
        (decisions/exclusions.csv, reason upstream-missing, HTTP status in the note);
      - with --accept-hashes, the sha256 of files that differ from their pins as a documented
        deviation (decisions/accepted-hashes.csv; the card says how many and that it is not the release);
      - the release's split file, so every other image keeps its side;
      - expected counts: the release's minus the images left out (per configuration, split and class).
    Example: cxr-dataset new-variant --from 1.0.0 ./my-variant --exclude-missing ./covid19-cxr-1.0.0.missing-files.csv
    """
    from . import variant
    from .counts import count_differences, expected_by_config, expected_counts
    from .naming import manifest_option, published_release, shown_path

    source = variant.resolve_from(base, name)
    options = command_options(cache_dir, mirror, offline, None, quiet)
    made, resolution = variant.new_variant(source, folder, exclude_missing=exclude_missing, options=options, version=new_version,
                                           accept_hashes=accept_hashes)
    click.echo(f"wrote {folder}: {made.name} {made.version}, derived from {source.version}")
    if exclude_missing is not None:
        excluded = resolution.excluded
        n = int(excluded["reason"].eq(variant.MISSING_REASON).sum())
        click.echo(f"  excluded {n:,} missing file(s) (decisions/exclusions.csv, reason {variant.MISSING_REASON})")
    if accept_hashes is not None:
        n = len(resolution.decisions.accepted_hashes)
        click.echo(f"  accepted the sha256 of {n:,} file(s) that differ from {source.version}'s pins (decisions/accepted-hashes.csv)")
    for config, counts in expected_by_config(made).items():
        click.echo(f"  expected counts{f' of {config}' if config else ''} (the release's minus the files left out):")
        for split_name, per_class in counts.items():
            click.echo(f"    {split_name:5s} " + "  ".join(f"{label} {n:,}" for label, n in per_class.items())
                       + f"  (total {sum(per_class.values()):,})")
    published = published_release(made)
    if published is not None:
        differences = count_differences(expected_counts(published), expected_counts(made))
        click.echo(f"  differs from release {published.version}: " + ("; ".join(differences) if differences else "no count differs"))
    option = manifest_option(made)
    click.echo("Next (say what this variant is for in manifest.yaml's description and release_notes; both reach its card):")
    click.echo(f"  cxr-dataset plan {option}")
    out = folder.parent / f"{made.name}-{made.version}"
    out = out if out.resolve() != folder.resolve() else folder.parent / f"{made.name}-{made.version}-data"
    click.echo(f"  cxr-dataset build {option} --out {shown_path(out)}"
               " --kaggle-archive ./chest-xray-pneumonia.zip" + (f" --mirror {mirror}" if mirror else ""))
    click.echo(f"  cxr-dataset cite {option}")


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
@click.option("--seeds", type=click.IntRange(1), default=1, show_default=True,
              help="Train N models (seeds SEED, SEED+1, ...); the verdict weighs their spread.")
@click.option("--config", "config", metavar="NAME",
              help="Release configuration to certify (paper, curated). [default: the release's default]")
@click.option("--probes", "probes_flag", is_flag=True,
              help="Also train the DCNN shortcut probes (border, lung; on a GPU the source hold-out too). The fast "
                   "linear probes run on every certificate.")
@click.option("--probe", "probe_names", multiple=True, type=click.Choice(["border", "lung", "holdout", "all"]),
              help="Train only these DCNN probes (repeatable; implies --probes; 'lung' blanks a centred ellipse, "
                   "'holdout' trains once per COVID-19 source with that source's COVID-19 films left out).")
@click.option("--probe-epochs", type=click.IntRange(1),
              help="Epochs of the DCNN probes. [default: the recipe's on a GPU, at most 3 on a CPU]")
@click.option("--mixed-precision", is_flag=True, help="float16 compute on a GPU (numbers may differ slightly).")
@click.option("--no-verify", is_flag=True, help="Skip recomputing the release fingerprint before training.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch progress.")
@click.option("--backend", type=click.Choice(["tensorflow", "jax", "torch"]),
              help="Keras 3 backend to train on (sets KERAS_BACKEND before Keras is imported). "
                   "[default: $KERAS_BACKEND, else tensorflow]")
@click.option("--jit-compile", is_flag=True,
              help="Compile the train step (XLA on TensorFlow, torch.compile on PyTorch; JAX always compiles it). "
                   "On TensorFlow this turns op determinism off (XLA has no deterministic MaxPool gradient).")
@fail_cleanly
def baseline(data_dir, out, recipe, epochs, batch_size, image_size, seed, seeds, config, probes_flag, probe_names,
             probe_epochs, mixed_precision, no_verify, quiet, backend, jit_compile):
    """Certify a release: train and evaluate the paper's DCNN on it, compare with the paper.

    \b
    Needs Keras 3 and a backend: pip install 'covid19-cxr-dataset[baseline]' (TensorFlow), or the
    extra baseline-jax or baseline-torch with --backend jax|torch. Uses the GPU when the backend sees
    one. Writes certificate.json, certificate.md, predictions.csv and PNG plots to --out.
    Every run adds the fast shortcut probes (linear models on the border, the film without its lungs,
    the corners, metadata, the source, a source hold-out); --probes adds their DCNN versions.
    Exit code 0 when the verdict is pass, review, no-reference or quick-check (--epochs,
    --batch-size or --image-size: a run that certifies nothing); 3 when it is fail.
    """
    from .errors import FingerprintMismatch

    check_baseline_inputs(data_dir, out, config)  # before TensorFlow loads and training starts
    from .baseline import DEFAULT_SEED, run_baseline
    from .baseline._backend import select_backend
    from .baseline.class_evidence import probe_line

    select_backend(backend)  # before anything imports Keras
    probes = list(probe_names) if probe_names else probes_flag
    try:
        certificate = run_baseline(
            data_dir, out, recipe=recipe, epochs=epochs, batch_size=batch_size, image_size=image_size,
            seed=DEFAULT_SEED if seed is None else seed, seeds=seeds, config=config, probes=probes,
            probe_epochs=probe_epochs, mixed_precision=mixed_precision, verify_fingerprint=not no_verify,
            progress=not quiet and progress.is_enabled(), backend=backend, jit_compile=True if jit_compile else None,
        )
    except FingerprintMismatch as error:
        raise error.skipped_by("--no-verify") from None
    accuracy = certificate.get("metrics", {}).get("accuracy")
    verdict = certificate.get("verdict")
    click.echo(f"accuracy {accuracy:.4f}" if isinstance(accuracy, float) else "accuracy: see certificate.json")
    if verdict == "quick-check":
        click.echo("verdict: quick-check (the recipe was overridden: this run certifies nothing; see certificate.md)")
    else:
        click.echo(f"verdict: {verdict} (against the paper's figures; see certificate.md)")
    for name, probe in certificate.get("probes", {}).items():
        click.echo(probe_line(name, probe))
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
@click.option("--config", "config", metavar="NAME", help="The configuration you used (e.g. paper, curated); the release entry names it.")
@click.option("--release", "release_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A built release folder: verify it, then cite it with the fingerprints recomputed from its shards.")
@click.option("--repo-id", metavar="ORG/NAME",
              help="The Hugging Face dataset repository the release lives in: the release entry links it. "
                   "[default with --release: the one publish recorded in the folder]")
@click.option("--workers", type=click.IntRange(1, 256), help="With --release: parallel workers for verifying. [default: all cores]")
@fail_cleanly
def cite(version, manifest_path, name, fmt, config, release_dir, repo_id, workers):
    """Print how to cite a release: the release itself, then every work it is built from.

    The release's entry carries each configuration's fingerprint (BibTeX note, CFF identifiers) when
    the release records them, or, with --release DIR, those of that folder once it verifies; and where
    the release lives (--repo-id, or the repository publish recorded in the folder), when known.
    """
    from .card_sections import hub_url
    from .citation import format_citations

    url = hub_url(repo_id) if repo_id else None
    if release_dir is not None:
        from .verify import cite_release

        manifest = load_manifest(version, manifest_path, name) if version or manifest_path else None
        click.echo(cite_release(release_dir, fmt, config, manifest=manifest, workers=workers or os.cpu_count() or 1, url=url), nl=False)
        return
    click.echo(format_citations(load_manifest(version, manifest_path, name), fmt, config, url or ""), nl=False)


@main.command("verify")
@click.argument("release_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(1, 256), help="Parallel workers for hashing and decoding. [default: all cores]")
@FINGERPRINT_OPTION
@fail_cleanly
def verify_command(release_dir, workers, fingerprints):
    """Check a release folder against its build_report.json, and against fingerprints from outside it.

    Checks every shard's sha256 and size, that no other shard is there, each configuration's
    fingerprint (every column of every row, and the configuration's name, default and data files),
    the counts per split and class, and that README.md, croissant.json and unpinned-files.csv are
    exactly what the build generates from the report. The fingerprints are also checked against
    --fingerprint values and against those this package records for the release. Exit code 0: the
    release is intact; 1: it is not (every problem is named with its file, expected and found value);
    2: a malformed option.
    """
    from .verify import require_verified

    click.echo(require_verified(release_dir, workers=workers or os.cpu_count() or 1, fingerprints=fingerprints).summary())


@main.command("publish")
@click.argument("release_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, metavar="ORG/NAME", help="Hugging Face dataset repository (created if missing).")
@click.option("--dry-run", is_flag=True, help="Verify, then list every file that would be uploaded (size, sha256); upload nothing.")
@click.option("--private/--public", default=None,
              help="Visibility of a new repository (an existing one keeps its own). [default: private for a variant, else public]")
@click.option("--revision", metavar="BRANCH", help="Branch to commit to. [default: main, what the Hub shows and reads]")
@click.option("--workers", type=click.IntRange(1, 256), help="Parallel workers for verification. [default: all cores]")
@fail_cleanly
def publish_command(release_dir, repo_id, dry_run, private, revision, workers):
    """Upload a verified release to the Hugging Face Hub: commit it to main and tag it v<version>.

    \b
    Verifies the folder first and refuses a release that fails. Records ORG/NAME in the folder as where
    the release lives (the card's citation and examples), commits README.md, croissant.json,
    build_report.json and the shards to main, checks the commit, then tags it v<version>, so
    datasets.load_dataset("ORG/NAME", revision="v<version>") loads exactly this release. --dry-run
    shows all of that, with warnings (a local variant; license-restricted images), and changes nothing.
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
@fail_cleanly
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
@fail_cleanly
def lock_github(manifest_path, source_name, tree, metadata):
    """Write a GitHub source's lock file: the metadata table and every image it names, by git blob id."""
    from . import locks, manifest

    loaded = manifest.load(manifest_path)
    source = loaded.source(source_name)
    rows = locks.github_lock_rows(loaded, source, tree, metadata)
    target = loaded.folder / source.lock
    locks.write_github_lock(target, rows)
    click.echo(f"wrote {target}: {len(rows):,} pinned files")


@lock.command("splits")
@release_options
@click.option("--from-build", "from_build", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Take the split from this built release folder (for releases whose build finds what a plan cannot, "
                   "such as pixel duplicates) instead of planning it from metadata.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the recorded split file differs from what the rules give.")
@fail_cleanly
def lock_splits(version, manifest_path, name, cache_dir, mirror, offline, workers, quiet, from_build, check):
    """Record a release's split as data: splits.csv (source, source_path, label, split, patient_group, configs).

    Run once when a release is cut: the manifest's split rules place every record (the recorded file is
    ignored), and the result is written to the file `split.assignment` names (splits.csv, added to the
    manifest when absent). From then on every plan and build keeps each recorded image on its side.
    """
    from . import locks, plan as plan_module, split

    loaded = load_manifest(version, manifest_path, name)
    if from_build is not None:
        table = plan_module.assignment_from_build(from_build)
    else:
        resolution = plan_module.plan(loaded, command_options(cache_dir, mirror, offline, workers, quiet), use_assignment=False)
        problems = [p for c in loaded.configs for p in plan_module.check_counts(loaded, resolution.kept, config=c.name)]
        if problems:
            raise CxrDatasetError(f"{loaded.path}: the plan does not give the expected counts ({'; '.join(problems)}); "
                                  "a split file records a release that matches its counts. Use --from-build DIR when "
                                  "only a build finds the difference.")
        table = plan_module.assignment_table(resolution)
    if check:
        recorded = plan_module.recorded_assignment(loaded)
        if recorded is None:
            raise CxrDatasetError(f"{loaded.path} records no split file (split.assignment); run without --check to write one")
        columns = list(split.ASSIGNMENT_COLUMNS)
        same = recorded[columns].reset_index(drop=True).equals(table[columns].reset_index(drop=True))
        click.echo(f"{loaded.split.assignment}: {'matches' if same else 'DIFFERS FROM'} the split the rules give ({len(table):,} images)")
        sys.exit(0 if same else 1)
    target, changed = locks.record_split_file(loaded, table)
    by_split = table.groupby("split").size().to_dict()
    click.echo(f"wrote {target}: {len(table):,} images ({', '.join(f'{k} {v:,}' for k, v in sorted(by_split.items(), key=lambda kv: kv[0] != 'train'))})"
               + ("" if changed else "; unchanged"))


@lock.command("kaggle")
@click.option("--manifest", "manifest_path", type=click.Path(exists=True, path_type=Path), required=True, help="The manifest folder to pin.")
@click.option("--kaggle-archive", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The Kaggle archive the release is built from.")
@click.option("--replace-pins", is_flag=True,
              help="Overwrite sha256 already pinned that this archive contradicts (each change is printed). Without "
                   "it such a contradiction is an error and nothing is written.")
@fail_cleanly
def lock_kaggle(manifest_path, kaggle_archive, replace_pins):
    """Record the sha256 of every listed Kaggle file from the archive, so later builds verify them.

    Files without a pin get one; an existing pin is never replaced unless --replace-pins is given.
    """
    from . import locks, manifest

    loaded = manifest.load(manifest_path)
    source = locks.kaggle_source(loaded)
    recorded, missing, changed = locks.record_kaggle_checksums(loaded, source, kaggle_archive, replace=replace_pins)
    for name, old, new in changed:
        click.echo(f"replaced the pin of {name}: {old} -> {new}")
    click.echo(f"recorded {recorded:,} sha256 in {loaded.file(source.files)} ({len(changed):,} pin(s) replaced)")
    if missing:
        raise CxrDatasetError(f"{len(missing)} listed file(s) are not in {kaggle_archive}, e.g. {missing[0]}; is it the pinned version?")


if __name__ == "__main__":  # python -m covid19_cxr_dataset.cli
    from . import interrupts

    interrupts.install()
    try:
        main()
    finally:
        interrupts.exiting()
