"""``run_baseline``: verify a release, train the recipe's DCNN on it (one or more seeds), run the
shortcut probes (the fast linear ones always, the DCNN ones when asked), evaluate, write a certificate."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import CLASS_NAMES
from .. import progress as progress_bars
from ..errors import CxrDatasetError
from ..release import require_splits
from ..staging import check_writable_folder
from ..release import resolve_config, verify_config_fingerprint
from .certificate import build_certificate, write_run_outputs
from .data import load_release, read_release_report, verify_counts
from .class_evidence import BOOTSTRAP_RESAMPLES, class_evidence
from .evaluate import evaluate_predictions
from .holdout import dcnn_holdout_entry, holdout_result, holdout_sources, holdout_train_mask, subset_split
from .linear_probes import fast_probes, read_probe_table
from .model import build_model_from_recipe, build_training_model
from .probes import (
    CPU_PROBE_EPOCHS,
    FLAG_RULE,
    IMAGE_PROBES,
    blank_arrays,
    image_probe_result,
    resolve_probes,
    share_of_gain,
    skipped,
)
from .recipe import Recipe, load_recipe, with_overrides
from .train import (
    compile_model,
    describe_hardware,
    describe_run,
    evaluate_loss,
    mixed_precision_policy,
    predict,
    resolve_run_options,
    train,
)
from ._backend import apply_determinism, configure_devices, import_keras, prepare_backend

DEFAULT_SEED = 42
PROBE_SHAPES = {"border": "box", "lung": "ellipse"}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class RunClock:
    """Adds images/s and an ETA for the whole run to each epoch line the training prints.

    The run is planned up front (every seed's training and every image probe's, in epochs of
    ``n_train`` images), so after the first epoch a CPU user knows whether to wait minutes or hours.
    """

    def __init__(self, planned_epochs: int, n_train: int, say: Callable[[str], None] | None):
        self.total_images = planned_epochs * n_train
        self.n_train = n_train
        self.say = say
        self.done_images = 0
        self.mark = time.perf_counter()
        self.label = ""
        self.epoch = 0
        self.steady_rate: float | None = None  # images/s of the latest epoch that was not a first one

    def start(self, label: str, epochs: int) -> None:
        self.label = label
        self.epoch = 0
        self.mark = time.perf_counter()
        if self.say:
            self.say(f"{label}: {epochs} epoch(s) of {self.n_train} training images")

    def epoch_line(self, line: str) -> None:
        now = time.perf_counter()
        seconds, self.mark = now - self.mark, now
        self.done_images += self.n_train
        self.epoch += 1
        rate = self.n_train / seconds if seconds > 0 else float("inf")
        if self.epoch > 1:
            self.steady_rate = rate
        # a first epoch also builds and traces the model: later epochs' pace predicts better once known
        pace = self.steady_rate or rate
        remaining = max(0, self.total_images - self.done_images) / pace
        shown = f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"
        note = " (first epoch: includes tracing)" if self.epoch == 1 and self.steady_rate is None else ""
        if self.say:
            self.say(f"{line}  {shown} images/s  ETA {format_duration(remaining)}{note}  [{self.label}]")


def _train_once(arrays: dict[str, Any], recipe: Recipe, *, seed: int, policy: str | None, deterministic: bool,
                clock: RunClock, label: str, jit_compile: bool | None = None, on_gpu: bool = False) -> dict[str, Any]:
    """Train one model on ``arrays``; its history, test probabilities, test loss, seconds and backend record."""
    apply_determinism(seed, deterministic=deterministic, on_gpu=on_gpu)
    network = build_model_from_recipe(recipe, dtype_policy=policy)
    model = compile_model(build_training_model(network, recipe), recipe, dtype_policy=policy, jit_compile=jit_compile)
    clock.start(label, recipe["training"]["epochs"])
    mark = time.perf_counter()
    history = train(model, arrays, recipe, seed=seed, progress=clock.epoch_line)
    train_seconds = time.perf_counter() - mark
    batch_size = recipe["training"]["batch_size"]
    probs = predict(model, arrays["test"], batch_size)
    loss = evaluate_loss(model, arrays["test"], batch_size)
    # which backend, device, precision, compilation and determinism ran (train.describe_run)
    backend = describe_run(model, dtype_policy=policy, deterministic=deterministic)
    del model, network
    import_keras().backend.clear_session()  # free the previous model before the next seed or probe
    return {"history": history, "probs": probs, "loss": loss, "train_seconds": train_seconds, "backend": backend}


@progress_bars.follows("progress")  # progress=False silences the bars too (decode, epochs)
def run_baseline(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    recipe: str | Path | Recipe = "paper",
    epochs: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    seed: int = DEFAULT_SEED,
    seeds: int = 1,
    config: str | None = None,
    probes: bool | Iterable[str] | None = None,
    probe_epochs: int | None = None,
    mixed_precision: bool = False,
    verify_fingerprint: bool = True,
    deterministic: bool | None = None,
    progress: bool | Callable[[str], None] = True,
    backend: str | None = None,
    jit_compile: bool | None = None,
) -> dict[str, Any]:
    """Train and evaluate the baseline on the release in ``data_dir``; write its certificate to ``out_dir``.

    ``recipe`` is a name (``baseline/recipes/<name>.yaml``; ``paper`` is also built in) or a YAML
    path; ``epochs``, ``batch_size`` and ``image_size`` override it and are recorded as overrides (the
    verdict is then ``quick-check``). ``config`` names the release configuration (``paper``,
    ``curated``; default: the release's default). ``seeds`` trains that many models, seeds ``seed``,
    ``seed + 1``, ...; the verdict weighs their spread. The fast linear shortcut probes
    (``linear_probes.fast_probes``) run on every call; ``probes`` adds the DCNN probes: True for
    ``probes.DEFAULT_PROBES`` (border, lung; and the source hold-out on a GPU), or names from
    ``probes.DCNN_PROBES`` (``"all"``); ``probe_epochs`` sets their epochs (default: the recipe's on a
    GPU, ``min(3, recipe)`` on a CPU). The configuration's fingerprint is recomputed first and a mismatch
    with build_report.json raises ``errors.VerificationError`` (``verify_fingerprint=False`` skips
    that; the certificate says so). ``progress``: True prints one line per stage and epoch (with
    images/s and the run's ETA) to stderr, a callable receives those lines, False is silent.
    ``backend``: the Keras backend (``tensorflow``, ``jax``, ``torch``; default ``KERAS_BACKEND``, else
    TensorFlow); a process trains on one backend only (``_backend.select_backend``).
    ``deterministic`` switches the backend's deterministic kernels on (process-wide; default: on,
    except TensorFlow with ``jit_compile``, whose XLA has no deterministic MaxPool gradient);
    ``jit_compile`` compiles the train step (default: Keras's choice per backend, see
    ``train.resolve_run_options``). The certificate's ``backend`` block says which backend, device,
    precision, compilation and determinism switches ran.

    Returns the certificate (also written as ``out_dir/certificate.json``).
    """
    started = time.perf_counter()
    say = _stderr if progress is True else (progress or None)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    require_splits(data_dir, config, option="data_dir")  # before any training: train and test, a writable out_dir
    check_writable_folder(out_dir, option="out_dir", protected=[("the release folder", data_dir)])
    if seeds < 1:
        raise CxrDatasetError(f"seeds={seeds}: expected at least 1")
    resolved = with_overrides(load_recipe(recipe), epochs=epochs, batch_size=batch_size, image_size=image_size)
    resolve_probes(probes)  # unknown names fail before the long steps
    backend_name = prepare_backend(backend, deterministic=deterministic is not False)  # before Keras is imported
    jit_compile, deterministic = resolve_run_options(backend_name, jit_compile=jit_compile,
                                                     deterministic=deterministic)
    import_keras()  # fail before the long steps if the backend's extra is missing
    configure_devices()  # before any op runs: GPU memory growth can only be set then
    timing: dict[str, float] = {}

    report = read_release_report(data_dir)
    release_config = resolve_config(data_dir, report, config)
    if verify_fingerprint:
        if say:
            say(f"verifying fingerprint of {data_dir} (configuration {release_config.name}) ...")
        mark = time.perf_counter()
        verify_config_fingerprint(data_dir, release_config)
        timing["fingerprint_seconds"] = time.perf_counter() - mark

    mark = time.perf_counter()
    shards = release_config.shards_by_split(data_dir)
    arrays = load_release(data_dir, resolved, shards=shards)
    verify_counts(data_dir, {**report, "counts": release_config.counts}, arrays)
    timing["decode_seconds"] = time.perf_counter() - mark
    if say:
        sizes = ", ".join(f"{split} {len(a)}" for split, a in arrays.items())
        say(f"decoded {sizes} images in {timing['decode_seconds']:.1f} s; recipe {resolved.name} ({resolved.source})")

    policy = mixed_precision_policy(mixed_precision)
    hardware = describe_hardware(policy)
    recipe_epochs = resolved["training"]["epochs"]
    probe_names = resolve_probes(probes, gpu=hardware["device"] == "GPU")
    image_probes = [name for name in probe_names if name in IMAGE_PROBES]
    held_out = holdout_sources(arrays["train"].labels, arrays["train"].sources) if "holdout" in probe_names else []
    if probe_epochs is None:
        probe_epochs = recipe_epochs if hardware["device"] == "GPU" else min(CPU_PROBE_EPOCHS, recipe_epochs)
    probe_recipe = resolved if probe_epochs == recipe_epochs else with_overrides(resolved, epochs=probe_epochs)
    dcnn_trainings = [*image_probes, *(f"holdout {source}" for source in held_out)]
    clock = RunClock(seeds * recipe_epochs + len(dcnn_trainings) * probe_epochs, len(arrays["train"]), say)
    if say:
        say(f"training on {hardware['name']} ({hardware['device']}, {hardware['backend']} "
            f"{hardware['backend_version']}, {hardware['dtype_policy']}): "
            f"{seeds} seed(s) x {recipe_epochs} epochs" +
            (f", probes {', '.join(dcnn_trainings)} x {probe_epochs} epochs" if dcnn_trainings else ""))

    evaluation = resolved["evaluation"]
    smoothing = resolved["training"]["label_smoothing"]
    test = arrays["test"]
    runs, first, backend_record = [], None, {}
    on_gpu = hardware["device"] == "GPU"
    mark = time.perf_counter()
    for index in range(seeds):
        run_seed = seed + index
        trained = _train_once(arrays, resolved, seed=run_seed, policy=policy, deterministic=deterministic,
                              jit_compile=jit_compile, on_gpu=on_gpu, clock=clock,
                              label=f"seed {run_seed}" if seeds > 1 else "model")
        metrics = evaluate_predictions(
            test.labels, trained["probs"], threshold=evaluation["threshold"], confidence=evaluation["confidence"],
            bootstrap_resamples=evaluation["bootstrap_resamples"], seed=run_seed, label_smoothing=smoothing,
        )
        metrics["loss"] = trained["loss"]
        metrics["per_class_evidence"] = class_evidence(test.labels, trained["probs"], CLASS_NAMES,
                                                       resamples=BOOTSTRAP_RESAMPLES, confidence=evaluation["confidence"], seed=run_seed)
        runs.append({"seed": run_seed, "metrics": metrics, "history": trained["history"]})
        if first is None:
            first, backend_record = trained, trained["backend"]
    timing["train_seconds"] = time.perf_counter() - mark

    probe_results: dict[str, Any] = {}
    mark = time.perf_counter()
    model_accuracy = runs[0]["metrics"]["accuracy"]
    full_model = runs[0]["metrics"]["per_class_evidence"]
    confidence = evaluation["confidence"]
    for name in image_probes:
        trained = _train_once(blank_arrays(arrays, PROBE_SHAPES[name]), probe_recipe, seed=seed, policy=policy,
                              deterministic=deterministic, jit_compile=jit_compile, on_gpu=on_gpu, clock=clock,
                              label=f"{name} probe")
        probe_results[name] = image_probe_result(
            name, PROBE_SHAPES[name], test.labels, trained["probs"], train_labels=arrays["train"].labels,
            epochs=probe_epochs, recipe_epochs=recipe_epochs, full_model=full_model, confidence=confidence, seed=seed)
    if "holdout" in probe_names:
        entries = {}
        for source in held_out:
            keep = holdout_train_mask(arrays["train"].labels, arrays["train"].sources, source)
            trained = _train_once({**arrays, "train": subset_split(arrays["train"], keep)}, probe_recipe, seed=seed,
                                  policy=policy, deterministic=deterministic, jit_compile=jit_compile, on_gpu=on_gpu,
                                  clock=clock, label=f"holdout {source}")
            entries[source] = dcnn_holdout_entry(source, test.labels, test.sources, trained["probs"], first["probs"],
                                                 confidence)
        if entries:
            probe_results["holdout"] = holdout_result(
                "holdout", "dcnn", entries, model="the recipe's DCNN", epochs=probe_epochs, recipe_epochs=recipe_epochs,
                held_out_films="the held-out source's COVID-19 test films")
        else:
            probe_results["holdout"] = skipped("holdout", "the train split's COVID-19 films come from fewer than two "
                                                          "sources", model_kind="dcnn")
    if say:
        say("reading thumbnails and metadata for the fast linear probes ...")
    tables = {split: read_probe_table(paths) for split, paths in shards.items()}
    probe_results.update(fast_probes(tables["train"], tables["test"], full_model=full_model, confidence=confidence,
                                     seed=seed))
    for name, result in probe_results.items():
        if "accuracy" in result and name != "source":
            result["share_of_model_gain"] = share_of_gain(result, model_accuracy)
        if say and result["status"] == "ran":
            flagged = result.get("separated_classes") if "separated_classes" in result else result.get("flagged_sources")
            say(f"{name} probe ({result['model_kind']}): " + (f"FLAGGED ({', '.join(flagged)})" if result["flagged"]
                                                       else "not flagged"))
    timing["probes_seconds"] = time.perf_counter() - mark
    timing["total_seconds"] = time.perf_counter() - started

    certificate = build_certificate(
        data_dir=data_dir, report=report, fingerprint_verified=verify_fingerprint,
        counts={split: a.counts() for split, a in arrays.items()}, recipe=resolved, seed=seed,
        deterministic=deterministic, hardware=hardware, timing=timing, history=runs[0]["history"],
        metrics=runs[0]["metrics"], runs=runs, config=release_config.describe(), probes=probe_results,
        probes_info={"requested": list(probe_names), "dcnn_probes": list(probe_names),
                     "fast_probes": [name for name, r in probe_results.items() if r.get("model_kind") == "linear"],
                     "image_probe_epochs": probe_epochs if dcnn_trainings else None, "flag_rule": FLAG_RULE},
        backend=backend_record,
    )
    path = write_run_outputs(out_dir, certificate, sources=test.sources, source_paths=test.source_paths,
                             labels=test.labels, probs=first["probs"])
    if say:
        say(f"test accuracy {runs[0]['metrics']['accuracy']:.4f}; verdict {certificate['verdict']}; certificate {path}")
    return certificate
