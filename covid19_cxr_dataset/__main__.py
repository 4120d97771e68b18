"""The ``cxr-dataset`` program (also ``python -m covid19_cxr_dataset``): signals are handled from its
first line (``interrupts.install``), so a Ctrl-C or SIGTERM even while the libraries load ends it with
one line and exit code 130 or 143, never a traceback; then the click commands (``cli``) run."""

from . import interrupts

interrupts.install()  # first: the imports below take a noticeable part of a second


def main() -> None:
    try:
        from .cli import main as commands
    except KeyboardInterrupt as stopped:
        import sys

        sys.stderr.write(f"{interrupts.describe(stopped)} while starting: nothing was done\n")
        raise SystemExit(interrupts.exit_code(stopped)) from None
    try:
        commands()
    finally:
        interrupts.exiting()


if __name__ == "__main__":
    main()
