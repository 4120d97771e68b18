"""``run_baseline``: verify a release, train the recipe's DCNN on it, evaluate, write a certificate."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from .certificate import build_certificate, write_run_outputs
from .data import load_release, make_pipelines, read_release_report, verify_counts
from .data import verify_fingerprint as check_fingerprint
from .evaluate import evaluate_predictions
from .model import build_model_from_recipe
from .recipe import Recipe, load_recipe, with_overrides
from .train import (
    check_run_options,
    compile_model,
    configure_devices,
    describe_hardware,
    describe_run,
    evaluate_loss,
    mixed_precision_policy,
    predict,
    set_determinism,
    train,
)
from ._backend import import_tensorflow

DEFAULT_SEED = 42


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_baseline(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    recipe: str | Path | Recipe = "paper",
    epochs: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    seed: int = DEFAULT_SEED,
    mixed_precision: bool = False,
    verify_fingerprint: bool = True,
    deterministic: bool = True,
    progress: bool | Callable[[str], None] = True,
    pipeline: str = "auto",
    jit_compile: bool = False,
) -> dict[str, Any]:
    """Train and evaluate the baseline on the release in ``data_dir``; write its certificate to ``out_dir``.

    ``recipe`` is a name (``baseline/recipes/<name>.yaml``; ``paper`` is also built in) or a YAML
    path; ``epochs``, ``batch_size`` and ``image_size`` override it and are recorded as overrides.
    The release's fingerprint is recomputed first and a mismatch with build_report.json raises
    ``errors.VerificationError`` (``verify_fingerprint=False`` skips that; the certificate says so).
    ``deterministic`` enables TensorFlow's op determinism (process-wide), so a rerun with the same seed
    on the same hardware gives the same numbers. ``progress``: True prints one line per stage and
    epoch to stderr, a callable receives those lines, False is silent. ``pipeline``: ``resident``
    keeps the training split on the device and augments there, ``cached`` feeds it from host
    memory through tf.data, ``auto`` is resident on a GPU and cached on a CPU; ``jit_compile``
    compiles the train step with XLA (needs ``deterministic=False``: XLA has no deterministic MaxPool
    gradient). The certificate's ``run_info`` says which path, device, precision and compilation ran.

    Returns the certificate (also written as ``out_dir/certificate.json``).
    """
    started = time.perf_counter()
    say = _stderr if progress is True else (progress or None)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    resolved = with_overrides(load_recipe(recipe), epochs=epochs, batch_size=batch_size, image_size=image_size)
    import_tensorflow()  # fail before the long steps if the extra is missing
    configure_devices()  # before any op runs: GPU memory growth can only be set then
    check_run_options(pipeline=pipeline, jit_compile=jit_compile, deterministic=deterministic)  # fail early
    timing: dict[str, float] = {}

    report = read_release_report(data_dir)
    if verify_fingerprint:
        if say:
            say(f"verifying fingerprint of {data_dir} ...")
        mark = time.perf_counter()
        check_fingerprint(data_dir, report)
        timing["fingerprint_seconds"] = time.perf_counter() - mark

    mark = time.perf_counter()
    arrays = load_release(data_dir, resolved)
    verify_counts(data_dir, report, arrays)
    timing["decode_seconds"] = time.perf_counter() - mark
    if say:
        sizes = ", ".join(f"{split} {len(a)}" for split, a in arrays.items())
        say(f"decoded {sizes} images in {timing['decode_seconds']:.1f} s; recipe {resolved.name} ({resolved.source})")

    set_determinism(seed, deterministic=deterministic)
    policy = mixed_precision_policy(mixed_precision)
    hardware = describe_hardware(policy)
    if say:
        say(f"training on {hardware['name']} ({hardware['device']}, {hardware['dtype_policy']})")
    pipelines = make_pipelines(arrays, resolved, seed=seed, path=pipeline)
    model = compile_model(build_model_from_recipe(resolved, dtype_policy=policy), resolved, dtype_policy=policy,
                          jit_compile=jit_compile or None)

    mark = time.perf_counter()
    history = train(model, pipelines, resolved, progress=say, jit_compile=jit_compile)
    timing["train_seconds"] = time.perf_counter() - mark

    mark = time.perf_counter()
    probs = predict(model, pipelines)
    evaluation = resolved["evaluation"]
    metrics = evaluate_predictions(
        arrays["test"].labels, probs, threshold=evaluation["threshold"], confidence=evaluation["confidence"],
        bootstrap_resamples=evaluation["bootstrap_resamples"], seed=seed,
    )
    metrics["loss"] = evaluate_loss(model, pipelines)
    timing["evaluate_seconds"] = time.perf_counter() - mark
    timing["total_seconds"] = time.perf_counter() - started

    certificate = build_certificate(
        data_dir=data_dir, report=report, fingerprint_verified=verify_fingerprint,
        counts={split: a.counts() for split, a in arrays.items()}, recipe=resolved, seed=seed,
        deterministic=deterministic, hardware=hardware, timing=timing, history=history, metrics=metrics,
    )
    # which input path, device, precision and compilation ran (train.describe_run)
    certificate["run_info"] = describe_run(model, pipelines, dtype_policy=policy, jit_compile=jit_compile)
    test = arrays["test"]
    path = write_run_outputs(out_dir, certificate, sources=test.sources, source_paths=test.source_paths,
                             labels=test.labels, probs=probs)
    if say:
        say(f"test accuracy {metrics['accuracy']:.4f}; verdict {certificate['verdict']}; certificate {path}")
    return certificate

