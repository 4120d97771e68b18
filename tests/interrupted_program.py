"""The ``cxr-dataset`` program with test hooks, for the signal tests (tests/test_faults_signals.py).

Run as ``python tests/interrupted_program.py ARGS...``: it runs exactly what the console script runs
(``from covid19_cxr_dataset.__main__ import main; main()``), after these hooks, chosen by environment
variables, are in place:

* ``CXR_TEST_SIGNAL_ON_IMPORT=<module>``: the process sends itself SIGINT when ``<module>`` starts to be
  imported (a Ctrl-C while the program loads, at a point a test can name);
* ``CXR_TEST_SLOW_CONVERT=<seconds>``: every image conversion first sleeps that long (in the worker
  processes too: they are forked with the hook in place), so a test can stop a build while it converts;
* ``CXR_TEST_SIGNAL_AFTER_RELEASE=1``: SIGINT once the release is renamed into place, again while the
  summary is printed, and once more while the interpreter shuts down.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import time


class _SignalOnImport:
    """A meta path finder that finds nothing: it only sends SIGINT when its module is asked for."""

    def __init__(self, module: str):
        self.module = module

    def find_spec(self, name, path=None, target=None):
        if name == self.module:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside the import
        return None


def _interrupt_me() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)


if os.environ.get("CXR_TEST_SIGNAL_ON_IMPORT"):
    sys.meta_path.insert(0, _SignalOnImport(os.environ["CXR_TEST_SIGNAL_ON_IMPORT"]))

if os.environ.get("CXR_TEST_SLOW_CONVERT"):
    import covid19_cxr_dataset.convert as convert

    _convert_file, _pause = convert.convert_file, float(os.environ["CXR_TEST_SLOW_CONVERT"])

    def _slow_convert_file(*args, **kwargs):
        time.sleep(_pause)
        return _convert_file(*args, **kwargs)

    convert.convert_file = _slow_convert_file

if os.environ.get("CXR_TEST_SIGNAL_AFTER_RELEASE"):
    from covid19_cxr_dataset import report, staging

    _move, _summary = staging.move_into_place, report.summary

    def _move_then_interrupt(folder, out):
        _move(folder, out)
        _interrupt_me()

    def _summary_interrupted(result):
        _interrupt_me()
        return _summary(result)

    staging.move_into_place, report.summary = _move_then_interrupt, _summary_interrupted
    atexit.register(_interrupt_me)  # runs while the interpreter shuts down

from covid19_cxr_dataset.__main__ import main  # noqa: E402  (what the console script runs)

sys.argv[0] = "cxr-dataset"
main()
