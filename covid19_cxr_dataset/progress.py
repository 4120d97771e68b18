"""Progress for every step that can take more than a few seconds: one tqdm bar on stderr that says
what the step does and, when it runs again, why.

    from . import progress
    for path in progress.track(paths, desc="hash shards (build report: sha256 of each)", unit="shard"):
        ...

One switch silences all of them: ``progress.enabled(False)`` around a call (the CLI's ``-q``;
``build`` sets it from ``Options.progress``). It is a context variable, so a library caller can
silence one call without touching any other, and a bar is always made in the calling thread (the
workers of a pool only do the work). Bars are on by default, as ``Options.progress`` is.

A bar's ``desc`` is what a user reads while waiting: name the step, then what it is for, e.g.
``"fingerprint (decode every image: pixels + labels)"``; a step that repeats says why in its
``desc`` (``"convert and write, again: 2 image(s) failed to convert"``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from typing import Any, Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("covid19_cxr_progress", default=True)


def is_enabled() -> bool:
    """Whether bars are shown in this context (``enabled(False)`` turns them off)."""
    return _ENABLED.get()


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Show (``on``) or silence every bar made inside the ``with`` block, in this context only."""
    token = _ENABLED.set(bool(on))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def bar(total: float | None = None, *, desc: str, unit: str = "it", enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar, shown unless progress is off here or ``enabled`` is False; close it, or use it as a
    context manager."""
    if unit == "B":
        options = {"unit_scale": True, "unit_divisor": 1024, **options}
    return tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and is_enabled()), dynamic_ncols=True, **options)


def track(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True,
          **options: Any) -> Iterator[T]:
    """``iterable``'s items, counted on a bar that closes when the iteration ends (or stops early);
    ``enabled`` and ``options`` as for :func:`bar`."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with bar(total, desc=desc, unit=unit, enabled=enabled, **options) as shown:
        for item in iterable:
            shown.update()  # counted when handed out: a consumer that stops at the last item still shows it done
            yield item


def follows(argument: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: run the function with bars off when its ``argument`` is False (e.g. ``progress=False``)."""
    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with enabled(bound.arguments[argument] is not False and is_enabled()):
                return function(*args, **kwargs)

        return wrapper

    return decorate
