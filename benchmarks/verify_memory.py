"""Peak memory and time of ``cxr-dataset verify`` on a small release, as it is and with one extra shard
of many identical tiny rows (a few megabytes on disk), side by side.

    python benchmarks/verify_memory.py [--rows 1000000] [--limit-mib 0] [--package DIR]

Writes a release with tests/release_factory.make_release, then copies it and adds
``data/train-00001-of-00002.parquet``: ``--rows`` copies of one of its rows, dictionary-encoded and
zstd-compressed (``release_factory.add_tiny_rows_shard``; 1,000,000 rows take about 440 KB). Each
``verify`` runs in a fresh child process (``python -m covid19_cxr_dataset.cli verify``); the table
gives its exit code, wall time and peak RSS (``VmHWM``, which the child reports as it exits).
``--limit-mib`` caps the child's address space (``RLIMIT_AS``). ``--package DIR``: the checkout whose
package to run (e.g. ``git archive`` of an older commit, for the "before" figure); default: this one.
Figures belong here, never in timed tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from release_factory import add_tiny_rows_shard, make_release  # noqa: E402


def run_verify(release: Path, package: Path, limit_mib: int) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS MiB, last output line) of ``verify`` in a fresh child; the
    child reports its own peak (``ru_maxrss``) as it exits, whatever way it exits."""
    code = (
        "import resource, sys, runpy\n"
        f"limit = {limit_mib} * 2**20\n"
        "if limit: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "sys.argv = ['cxr-dataset', 'verify', sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_module('covid19_cxr_dataset.cli', run_name='__main__')\n"
        "finally:\n"  # VmHWM: this process image's own peak (ru_maxrss would keep the parent's from the fork)
        "    hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')] if sys.platform == 'linux' else []\n"
        "    print(f'PEAK_RSS_KIB={hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(package))
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", code, str(release)], capture_output=True, text=True, env=env, cwd=package)
    wall = time.perf_counter() - start
    peaks = [line.split("=", 1)[1] for line in child.stderr.splitlines() if line.startswith("PEAK_RSS_KIB=")]
    peak = int(peaks[-1]) / 1024 if peaks else float("nan")
    lines = [line for line in child.stdout.splitlines() if line.strip()] or [
        line for line in child.stderr.splitlines() if line.strip() and not line.startswith("PEAK_RSS")]
    return child.returncode, wall, peak, (lines[-1].strip() if lines else "")[:110]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the extra shard")
    parser.add_argument("--limit-mib", type=int, default=0, help="RLIMIT_AS of the verify child (0: none)")
    parser.add_argument("--package", type=Path, default=REPO, help="checkout whose covid19_cxr_dataset runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pristine = make_release(Path(folder) / "pristine", per_class={"train": 4, "test": 2}, size=(64, 64))
        hostile = Path(shutil.copytree(pristine, Path(folder) / "hostile"))
        shard = add_tiny_rows_shard(hostile, args.rows)
        print(f"package: {args.package}; extra shard: {args.rows:,} rows, {shard.stat().st_size:,} bytes on disk")
        print(f"{'release':<24} {'exit':>4} {'wall s':>7} {'peak RSS MiB':>12}  last line")
        for label, release in (("pristine", pristine), (f"+{args.rows:,} tiny rows", hostile)):
            code, wall, peak, last = run_verify(release, args.package, args.limit_mib)
            print(f"{label:<24} {code:>4} {wall:>7.1f} {peak:>12,.0f}  {last}")


if __name__ == "__main__":
    main()
