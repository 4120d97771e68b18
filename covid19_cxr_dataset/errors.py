"""The project's exception types.

Every message names the file (or URL), what was expected, what was found, and what to do next.
The CLI turns any ``CxrDatasetError`` into one readable line and a non-zero exit code.
"""


class CxrDatasetError(Exception):
    """Base class of every error the package raises on purpose."""


class ManifestError(CxrDatasetError):
    """A manifest (or a file it names) is missing, malformed or inconsistent."""


class NotARegularFile(CxrDatasetError):
    """A handed-in path is not a regular file (a FIFO, device, socket or folder), or is larger than such a file may be."""


class DownloadError(CxrDatasetError):
    """A file could not be fetched after the allowed retries."""


class ChecksumMismatch(DownloadError):
    """Downloaded bytes differ from the pinned checksum; nothing entered the cache."""


class OfflineMissing(DownloadError):
    """``--offline`` was asked for but files are not in the cache."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


class MissingUpstreamFiles(DownloadError):
    """Pinned files the server answered for but would not give (404, 410, 403...) or gave with other bytes.

    Raised once, after every other file was fetched (those stay in the cache). ``missing`` holds one
    dict per file: ``cache_key``, ``url`` (redacted), ``status`` (the HTTP status as text, or
    ``"checksum"`` when the bytes differ from the pin) and ``detail``. The build adds ``source``,
    ``source_path``, ``split`` and ``label`` and writes the list to ``report_path``.
    """

    def __init__(self, message: str, missing: list[dict], report_path=None):
        super().__init__(message)
        self.missing = missing
        self.report_path = report_path


class ArchiveError(CxrDatasetError):
    """An archive is not a valid zip or holds unsafe entries."""


class CredentialsError(CxrDatasetError):
    """A source needs credentials or a manual download that was not given."""


class ConversionError(CxrDatasetError):
    """An image could not be decoded or normalized; ``reason`` is a reason code for the report."""

    def __init__(self, message: str, reason: str = "undecodable"):
        super().__init__(message)
        self.reason = reason


class CountMismatch(CxrDatasetError):
    """The built dataset's counts differ from the counts the manifest expects."""


class VerificationError(CxrDatasetError):
    """A built release differs from its build report."""


class FingerprintMismatch(VerificationError):
    """A configuration's shards no longer give the fingerprint its build report states. The message ends
    with how to go on anyway: ``skip`` names the option where it was called from (the library argument
    ``verify_fingerprint=False``; the command line's ``--no-verify``, ``skipped_by``)."""

    def __init__(self, message: str, skip: str = "verify_fingerprint=False"):
        super().__init__(f"{message} (or pass {skip} to train on it anyway)")
        self.detail, self.skip = message, skip

    def skipped_by(self, option: str) -> "FingerprintMismatch":
        """The same error, naming ``option`` as the way to skip the check."""
        return FingerprintMismatch(self.detail, option)


class PublishError(CxrDatasetError):
    """The Hub refused or failed a step of publishing (the message never holds the token)."""
