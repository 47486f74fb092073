"""Confinement of client paths to the server's data root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rsgrpc.engine.errors import InvalidArgumentError, PermissionDeniedError

_MAX_PATH_LENGTH = 4096


@dataclass(frozen=True)
class DataRoot:
    """The folder under which every client path must resolve."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> DataRoot:
        path = Path(root).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def resolve(self, client_path: str, *, field: str = "path") -> Path:
        """Return the real path of `client_path`, which is relative to the data root.

        Absolute paths, `..` components, and symlinks whose target lies
        outside the root are refused, whether or not the file exists.
        """
        if not client_path:
            raise InvalidArgumentError(f"{field} is empty", metadata={"field": field})
        if len(client_path) > _MAX_PATH_LENGTH or "\x00" in client_path:
            raise InvalidArgumentError(f"{field} is not a valid path", metadata={"field": field})
        pure = PurePosixPath(client_path)
        if pure.is_absolute() or client_path.startswith("\\"):
            raise PermissionDeniedError(
                f"{field} {client_path!r} is absolute; paths are relative to the data root",
                metadata={"field": field},
            )
        if ".." in pure.parts:
            raise PermissionDeniedError(
                f"{field} {client_path!r} contains '..'", metadata={"field": field}
            )
        real = (self.root / pure).resolve()
        if not real.is_relative_to(self.root):
            raise PermissionDeniedError(
                f"{field} {client_path!r} leads outside the data root", metadata={"field": field}
            )
        return real

    def relative(self, path: Path) -> str:
        """Return `path` as a client sees it: relative to the data root, with '/'."""
        return path.relative_to(self.root).as_posix()
