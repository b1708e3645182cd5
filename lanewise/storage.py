"""The storage root: a local folder by default, any fsspec URL (s3://...) otherwise."""

from __future__ import annotations

from typing import IO, Any

import fsspec


class Storage:
    """Files under one root URL: JSONL sent, raw outputs, result Parquet files."""

    def __init__(self, root_url: str, **storage_options: Any) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root_url, **storage_options)
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else \
            self.fs.protocol[0]
        self.root = self.root.rstrip("/")

    def url(self, *parts: str) -> str:
        """The full URL of a path under the root."""
        path = "/".join([self.root, *parts])
        return path if self.protocol in ("file", "local") else self.fs.unstrip_protocol(path)

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
