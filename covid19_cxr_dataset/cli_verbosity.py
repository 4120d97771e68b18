"""``-v`` and ``-q`` wherever a user types them: before the subcommand (``cxr-dataset -q build ...``)
or after it (``cxr-dataset build ... -q``).

``Group`` (the CLI's group class) gives every command it holds ``--verbose/-v`` and, unless the
command has its own, ``--quiet/-q``; a command's own ``--quiet`` gets the same effect. What they do:

- ``-q``: no progress bar (``progress.enabled(False)`` for the rest of the command) and only this
  package's warnings and errors; the command's results are still printed.
- ``-v``: this package's debug messages, every file downloaded and verified included.
"""

from __future__ import annotations

import logging
import sys

import click

from . import progress

PACKAGE_LOGGER = "covid19_cxr_dataset"
DOWNLOAD_LOGGER = "covid19_cxr_dataset.download"
_HANDLER_MARK = "_cxr_dataset_cli"


def configure_logging(*, verbose: bool, quiet: bool) -> None:
    """One handler on stderr for this package's messages (other libraries' INFO chatter stays quiet)."""
    package_log = logging.getLogger(PACKAGE_LOGGER)
    for handler in [h for h in package_log.handlers if getattr(h, _HANDLER_MARK, False)]:
        package_log.removeHandler(handler)  # an earlier invocation in this process (tests) wrote to its own stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    package_log.addHandler(handler)
    package_log.setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger(DOWNLOAD_LOGGER).setLevel(logging.WARNING)
    if verbose:
        _set_verbose(None, None, True)
    if quiet:
        _set_quiet(click.get_current_context(silent=True), None, True)


def _set_verbose(ctx, param, value):
    if value:
        logging.getLogger(PACKAGE_LOGGER).setLevel(logging.DEBUG)
        logging.getLogger(DOWNLOAD_LOGGER).setLevel(logging.DEBUG)
    return value


def _set_quiet(ctx, param, value):
    if value:
        if ctx is not None:
            ctx.with_resource(progress.enabled(False))  # undone when the command (or group) ends
        package_log = logging.getLogger(PACKAGE_LOGGER)
        if package_log.level != logging.DEBUG:  # -v -q: quiet bars, verbose messages
            package_log.setLevel(logging.WARNING)
    return value


VERBOSE_HELP = "Log every file downloaded and verified (also before the subcommand)."
QUIET_HELP = "No progress bars or progress messages (also before the subcommand)."


def verbose_option() -> click.Option:
    return click.Option(["--verbose", "-v"], is_flag=True, expose_value=False, callback=_set_verbose, help=VERBOSE_HELP)


def quiet_option() -> click.Option:
    return click.Option(["--quiet", "-q"], is_flag=True, expose_value=False, callback=_set_quiet, help=QUIET_HELP)


def add_verbosity(command: click.Command) -> click.Command:
    """Give ``command`` ``-v`` and ``-q`` (its own ``--quiet``, if any, gets ``-q``'s effect too)."""
    names = {name for param in command.params for name in getattr(param, "opts", [])}
    if "--verbose" not in names:
        command.params.append(verbose_option())
    own = next((p for p in command.params if "--quiet" in getattr(p, "opts", [])), None)
    if own is None:
        command.params.append(quiet_option())
    elif own.callback is None:
        own.callback = _set_quiet
    return command


class Group(click.Group):
    """A click group whose commands (and subgroups) all take ``-v`` and ``-q``."""

    group_class = type  # subgroups are of this class too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            add_verbosity(cmd)
        super().add_command(cmd, name)
