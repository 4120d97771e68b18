"""How the package names releases and manifests: versions, the bundled and published release, command lines.

A local variant has a PEP 440 local version (``1.0.0+local.1``; ``next_local_version``); the release
it belongs to is its public part (``public_version``). A manifest under the manifests root is
*bundled* (``--version 1.0.0`` finds it); any other folder is named with ``--manifest PATH``
(``manifest_option``), so every hint the package prints is a command that works for the manifest at
hand. ``published_release`` is the bundled release a manifest claims to be or to derive from.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from . import manifest as manifest_module
from .errors import ManifestError
from .manifest import Manifest

LOCAL_LABEL = "local"


_LOCAL = re.compile(r"^(?P<public>[^+]+)(?:\+(?P<local>[0-9A-Za-z.]+))?$")


def public_version(version: str) -> str:
    """The release a version belongs to: ``1.0.0+local.2`` -> ``1.0.0`` (PEP 440's public part)."""
    return version.split("+", 1)[0]


def is_local(version: str) -> bool:
    return "+" in version


def next_local_version(version: str) -> str:
    """``1.0.0`` -> ``1.0.0+local.1``; ``1.0.0+local.1`` -> ``1.0.0+local.2``; ``1.0.0+lab`` -> ``1.0.0+lab.local.1``."""
    match = _LOCAL.match(version)
    if not match:
        raise ManifestError(f"version {version!r} is not N.N.N with an optional +local label")
    public, local = match["public"], match["local"]
    if not local:
        return f"{public}+{LOCAL_LABEL}.1"
    counted = re.fullmatch(rf"(?:(.*)\.)?{LOCAL_LABEL}\.(\d+)", local)
    if counted:
        prefix = f"{counted[1]}." if counted[1] else ""
        return f"{public}+{prefix}{LOCAL_LABEL}.{int(counted[2]) + 1}"
    return f"{public}+{local}.{LOCAL_LABEL}.1"


def is_bundled(manifest: Manifest) -> bool:
    """True when ``manifest`` is a release under the manifests root (what ``--version`` finds)."""
    bundled = manifest_module.manifests_root() / manifest.name / manifest.version
    try:
        return bundled.resolve() == manifest.folder.resolve()
    except OSError:
        return False


def manifest_option(manifest: Manifest) -> str:
    """How a command line names this manifest: ``--version 1.0.0`` when bundled, else ``--manifest PATH``."""
    if is_bundled(manifest):
        named = "" if manifest.name == manifest_module.DEFAULT_NAME else f" --name {shlex.quote(manifest.name)}"
        return f"--version {shlex.quote(manifest.version)}{named}"
    return f"--manifest {shlex.quote(shown_path(manifest.folder))}"


def from_argument(manifest: Manifest) -> str:
    """What ``new-variant --from`` takes for this manifest: its version when bundled, else its folder."""
    if is_bundled(manifest):
        named = "" if manifest.name == manifest_module.DEFAULT_NAME else f" --name {shlex.quote(manifest.name)}"
        return f"{shlex.quote(manifest.version)}{named}"
    return shlex.quote(shown_path(manifest.folder))


def shown_path(path: Path) -> str:
    """``path`` as a user would type it: relative to the working folder when under it (``./x``)."""
    path = Path(path)
    try:
        relative = Path(os.path.abspath(path)).relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return f"./{relative.as_posix()}" if str(relative) != "." else "."


def published_release(manifest: Manifest) -> Manifest | None:
    """The bundled release this manifest claims to be or to derive from (same name, same public
    version), unless ``manifest`` is that release itself; None when there is none."""
    if is_bundled(manifest) and not is_local(manifest.version):
        return None
    folder = manifest_module.manifests_root() / manifest.name / public_version(manifest.version)
    if not (folder / manifest_module.MANIFEST_FILE).is_file():
        return None
    try:
        return manifest_module.load(folder)
    except ManifestError:
        return None


def portable_manifest_option(manifest: Manifest) -> str:
    """:func:`manifest_option` as the card prints it: a bundled release by version, any other folder by
    its folder name alone, whatever the working folder was (the card is published, and is a function
    of the manifest folder and the build report only)."""
    if is_bundled(manifest):
        return manifest_option(manifest)
    return f"--manifest {shlex.quote(manifest.folder.name)}"
