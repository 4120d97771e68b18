"""The wheels a GPU machine without TensorFlow and without network needs to run the baseline.

    python3 benchmarks/device_wheels.py --list        # every wheel, and the pip command that fetches them
    python3 benchmarks/device_wheels.py --check jax   # on the machine: what is missing for that backend

Such a machine (an image with PyTorch and JAX, Python 3.12, no TensorFlow, no network) lacks Keras
and a few small pure-Python needs of Keras and of this package's baseline import chain. ``WHEELS``
lists them with the versions this checkout was tested with; fetch them on a machine with network
(``--list`` prints the ``pip download`` command, about 5 MB in all), carry the folder, and
``benchmarks/device_certify.sh --wheels DIR`` installs them with ``--no-index`` into a private
folder. ``--check`` imports every module the baseline needs on that backend and names the
distribution to carry for each one that is missing; the exit code is 1 when something is.
"""

from __future__ import annotations

import argparse
import importlib
import sys

PYTHON_VERSION = "3.12"
WHEELS = (
    # (distribution, version, module it provides, why)
    ("keras", "3.15.1", "keras", "the baseline's model and training (Keras 3)"),
    ("namex", "0.1.0", "namex", "Keras"),
    ("optree", "0.20.0", "optree", "Keras (binary, cp312)"),
    ("turbojpeg", "0.0.2", "turbojpeg", "JPEG decode with libjpeg-turbo's fast IDCT, as TensorFlow's (binary, cp312)"),
    ("jsonschema", "4.26.0", "jsonschema", "recipe and manifest validation"),
    ("jsonschema-specifications", "2025.9.1", "jsonschema_specifications", "jsonschema"),
    ("referencing", "0.37.0", "referencing", "jsonschema"),
    ("rpds-py", "2026.9.1", "rpds", "referencing (binary, cp312)"),
    ("datasets", "5.2.0", "datasets", "the release's parquet features (publish.py)"),
    ("dill", "0.4.1", "dill", "datasets"),
    ("multiprocess", "0.70.19", "multiprocess", "datasets"),
)
PRESENT = ("numpy", "pandas", "pyarrow", "PIL", "yaml", "click", "requests", "filelock", "tqdm", "matplotlib",
           "h5py", "ml_dtypes", "rich", "absl", "packaging", "huggingface_hub", "fsspec", "xxhash")
"""Modules the baseline imports that the GPU image already holds (its package list, device README)."""
FRAMEWORK = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def download_command(folder: str = ".whl") -> str:
    platforms = " ".join(f"--platform {name}" for name in PLATFORMS)
    pins = " ".join(f"{name}=={version}" for name, version, _, _ in WHEELS)
    return (f"python3 -m pip download --no-deps --only-binary=:all: --python-version {PYTHON_VERSION} "
            f"--implementation cp {platforms} -d {folder} {pins}")


def missing_modules(backend: str) -> list[str]:
    """Modules of WHEELS, PRESENT and the backend's framework that do not import here."""
    missing = []
    for module in [FRAMEWORK[backend], *PRESENT, *(module for _, _, module, _ in WHEELS)]:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - a broken install is as missing as an absent one
            missing.append(f"{module} ({type(error).__name__}: {error})")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the wheels and the pip download command")
    parser.add_argument("--check", choices=sorted(FRAMEWORK), help="what is missing here for this backend")
    args = parser.parse_args(argv)
    if args.list or not args.check:
        print(f"wheels to carry to a GPU machine without TensorFlow (Python {PYTHON_VERSION}, x86_64):")
        for name, version, _, why in WHEELS:
            print(f"  {name}=={version:<12} {why}")
        print(f"fetch them where there is network:\n  {download_command()}")
    if not args.check:
        return 0
    missing = missing_modules(args.check)
    for line in missing:
        print(f"missing: {line}")
    if not missing:
        print(f"everything the baseline imports on {args.check} is here (Python {sys.version.split()[0]})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
