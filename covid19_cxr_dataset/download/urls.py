"""URL rules that need no network: checking a base URL, redacting URLs for messages, comparing origins.

Every URL that reaches a message, a log line, a sidecar or a report passes through :func:`redact_url`:
userinfo (``user:password@``) becomes ``***@`` and the value of any query parameter whose name looks
like a secret (``sig``, ``signature``, ``token``, ``key``, ``secret``, ``credential``, ``password``,
``auth``; signed storage URLs such as the ones Kaggle redirects to carry them) becomes ``***``.

:func:`check_base_url` validates a user-given base URL (``--mirror``, ``--kaggle-api``) before anything
is requested, so a typo fails with advice instead of as a connection error. :func:`_origin` is what
the redirect and credential rules of :mod:`.transport` compare: ``(scheme, host, port)`` with the
scheme's default port filled in.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .. import errors

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Query parameters that carry secrets in signed URLs (Kaggle redirects to signed storage URLs).
_SECRET_QUERY_NAME = re.compile(r"sig|signature|token|key|secret|credential|password|auth", re.IGNORECASE)


def check_base_url(url: str, option: str = "--mirror") -> str:
    """``url`` without a trailing slash if it is an absolute ``http(s)://host[:port][/path]`` URL.

    Raises:
        errors.DownloadError: another scheme (``file://``, ``ftp://``), no scheme or host, a port
            outside 1-65535, or an unparseable address; the message names ``option`` and the form expected.
    """
    problem = ""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # ValueError when out of range or not a number
        if parts.scheme.lower() not in ("http", "https"):
            problem = f"its scheme is {parts.scheme + '://' if parts.scheme else 'missing'}, not http:// or https://"
        elif not parts.hostname:
            problem = "it names no host"
        elif port == 0:
            problem = "port 0 is not a port"
        elif parts.query or parts.fragment or parts.username or parts.password:
            problem = "it carries a query, fragment or credentials"
    except ValueError as error:
        problem = f"it cannot be parsed ({error})"
    if problem:
        raise errors.DownloadError(
            f"{option} {redact_url(url)!r} is not a usable base URL: {problem}. Expected an absolute URL such as "
            "https://mirror.example.org/github (host and optional port 1-65535, then the same "
            "<owner>/<repo>/<commit>/<path> layout as raw.githubusercontent.com)."
        )
    return url.strip().rstrip("/")


def redact_url(url: str) -> str:
    """``url`` fit for a message: userinfo replaced by ``***`` and signed-URL secrets masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if _SECRET_QUERY_NAME.search(k) else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


def _origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of ``url``, lower-cased, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def _parses(url: str) -> bool:
    """True when ``url`` has a host and a valid port (so a failure to request it is the server's doing)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        return bool(parts.hostname)
    except ValueError:
        return False
