"""What a plan or build is told besides the manifest (the command line's flags), and what follows from them:
the cache folder, the checked ``--mirror``, the downloader and what the sources need (``sources.Inputs``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .download import KAGGLE_BASE_URL, Downloader, check_base_url, default_cache_dir
from .shards import DEFAULT_MAX_SHARD_BYTES
from .sources import Inputs


@dataclass
class Options:
    """Everything a build or plan can be told besides the manifest (the CLI's flags)."""

    cache_dir: Path | None = None
    mirror: str | None = None
    kaggle_api: str = KAGGLE_BASE_URL
    kaggle_archive: Path | None = None
    offline: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    progress: bool = True
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    overwrite: bool = False

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    @property
    def mirror_base(self) -> str:
        """``--mirror``, checked (``download.check_base_url``); "" when none was given."""
        return check_base_url(self.mirror, "--mirror") if self.mirror else ""

    def downloader(self) -> Downloader:
        allowed = [self.mirror_base] if self.mirror else []
        return Downloader(
            self.cache, offline=self.offline, workers=max(1, min(16, self.workers * 4)),
            allowed_redirect_hosts=allowed, progress=self.progress,
        )

    def inputs(self, downloader: Downloader | None = None) -> Inputs:
        """What the sources need to know of these options (``sources.Inputs``)."""
        return Inputs(
            cache=self.cache, downloader=downloader, github_base=self.mirror_base,
            kaggle_api=self.kaggle_api, kaggle_archive=self.kaggle_archive, offline=self.offline, progress=self.progress,
        )

