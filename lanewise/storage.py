"""The storage root: a local folder by default, any fsspec URL (s3://...) otherwise.

Every file lanewise writes is named by a full URL under the root, and that URL is what
the ledger records and every report shows: `file:///abs/folder/...` for a local (or
shared, mounted) folder, `s3://bucket/prefix/...` for S3. One form for every root: the
URL says which store holds the file, and pandas, pyarrow, DuckDB and fsspec open it as
it is (`pd.read_parquet("s3://...")` or `pd.read_parquet("file:///...")`).

S3 goes through s3fs: its endpoint and keys come from the options given to `Storage`
(`Settings.storage_options()`), else from botocore's own lookup (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `~/.aws`, an instance role).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO, Any

import fsspec

LOCAL_PROTOCOLS = ("file", "local")


class Storage:
    """Files under one root URL: JSONL sent, raw outputs, result Parquet files."""

    def __init__(self, root_url: str, **storage_options: Any) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root_url, **storage_options)
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else \
            self.fs.protocol[0]
        self.root = self.root.rstrip("/") or "/"

    @property
    def root_url(self) -> str:
        """The root itself as a URL (`file:///...`, `s3://...`)."""
        return self.fs.unstrip_protocol(self.root)

    def url(self, *parts: str) -> str:
        """The full URL of a path under the root (`file:///...` for a local folder)."""
        return self.fs.unstrip_protocol("/".join([self.root.rstrip("/"), *parts]))

    def _path(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def open(self, url: str, mode: str = "rb") -> IO[Any]:
        """Open a file under the root (parents are created for writing)."""
        path = self._path(url)
        if "w" in mode or "a" in mode:
            parent = path.rsplit("/", 1)[0]
            self.fs.makedirs(parent, exist_ok=True)
        return self.fs.open(path, mode)

    def exists(self, url: str) -> bool:
        """Whether the file exists."""
        return self.fs.exists(self._path(url))

    def remove(self, url: str) -> None:
        """Delete a file if it exists."""
        if self.exists(url):
            self.fs.rm(self._path(url))

    def replace(self, source_url: str, target_url: str) -> None:
        """Move a finished file over another: a rename on a local folder (atomic), a copy
        then delete on object stores (whose puts are whole-object anyway)."""
        self.fs.mv(self._path(source_url), self._path(target_url))


def display_url(url: str | None) -> str | None:
    """A stored file's URL as reports show it: ledgers written before URLs were
    recorded hold plain local paths, shown as `file://` URLs like the newer ones."""
    if not url or "://" in url:
        return url
    return Path(url).absolute().as_uri()


def remove_files(urls: list[str], **storage_options: Any) -> int:
    """Delete these files wherever they are (any root, any protocol; the options are
    for the object store's); returns how many existed."""
    removed = 0
    for url in urls:
        local = "://" not in url or url.split("://", 1)[0] in LOCAL_PROTOCOLS
        fs, path = fsspec.core.url_to_fs(url, **({} if local else storage_options))
        if fs.exists(path):
            fs.rm(path)
            removed += 1
    return removed


def prune_empty_folders(urls: list[str]) -> None:
    """Remove these local folders, deepest first, where they are empty (object stores
    have no folders to leave behind); a folder that holds anything stays."""
    local = [Path(fsspec.core.url_to_fs(url)[1]) for url in urls
             if url.split("://", 1)[0] in LOCAL_PROTOCOLS or "://" not in url]
    for folder in sorted(set(local), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()
