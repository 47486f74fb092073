"""Paths as the script's machine names them, and as the server's: a map of folder prefixes.

A script written for Remotior Sensus names files where its own machine has them
(``/mnt/gis/s2/B04.tif``); the server may mount the same folder elsewhere (``/data``).
``Session(..., path_map={"/mnt/gis": "/data"})``, or ``RSGRPC_PATH_MAP="/mnt/gis=/data"``
(several pairs separated by ``;``), rewrites each path the client sends that lies in a
mapped folder, and each path it returns, back. Folders match by whole components
(``/mnt/gis`` is not a prefix of ``/mnt/gis2``), the longest first. A path outside every
mapped folder is sent as it is: the server decides whether it lies under a data root.
A server folder may be a data root in object storage (``"/mnt/gis": "s3://bucket/gis"``).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

ENVIRONMENT_VARIABLE = "RSGRPC_PATH_MAP"


class PathMap:
    """Client folder (absolute) -> server folder (absolute, or relative to the server's first
    data root); no change when empty."""

    def __init__(self, pairs: Mapping[str, str] | None = None) -> None:
        cleaned = {}
        for client, server in (pairs or {}).items():
            if not (isinstance(client, str) and isinstance(server, str) and server):
                raise ValueError(f"a path_map pair is two folders, got {client!r}: {server!r}")
            if not client.startswith("/"):
                raise ValueError(f"a path_map folder of the client is absolute, got {client!r}")
            cleaned[posixpath.normpath(client)] = _tidy(server)
        self._to_server = _longest_first(cleaned.items())
        self._to_client = _longest_first((server, client) for client, server in cleaned.items())

    @classmethod
    def from_environment(cls) -> PathMap:
        """The map in ``RSGRPC_PATH_MAP``: ``client=server`` pairs separated by ``;``."""
        text = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
        pairs = {}
        for item in filter(None, (part.strip() for part in text.split(";"))):
            client, equals, server = item.partition("=")
            if not equals:
                raise ValueError(
                    f"{ENVIRONMENT_VARIABLE} holds client=server pairs separated by ';', "
                    f"got {item!r}"
                )
            pairs[client.strip()] = server.strip()
        return cls(pairs)

    def __bool__(self) -> bool:
        return bool(self._to_server)

    def to_server(self, path: str) -> str:
        return _rewrite(path, self._to_server)

    def to_client(self, path: str) -> str:
        return _rewrite(path, self._to_client)

    def paths_to_server(self, value: Any) -> Any:
        """A path argument as the server names it: a path, or a list of paths, of
        ``[path, name]`` pairs or of ``(path, band)`` pairs. Only absolute paths in a
        mapped folder change, so band names and numbers are left as they are."""
        if isinstance(value, str):
            return self.to_server(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.paths_to_server(item) for item in value)
        return value


def _tidy(folder: str) -> str:
    """`folder` with '//', '.' and '..' tidied away; a URL (a data root in object storage,
    ``s3://bucket/prefix``) keeps its ``scheme://``."""
    scheme, separator, rest = folder.partition("://")
    if separator and "/" not in scheme:
        return f"{scheme}://{posixpath.normpath('/' + rest)[1:]}"
    return posixpath.normpath(folder)


def _longest_first(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def _rewrite(path: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        base = old.rstrip("/")  # "" for the root folder
        if path == old or path.startswith(base + "/"):
            return new.rstrip("/") + path[len(base) :] or "/"
    return path
