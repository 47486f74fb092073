"""Confinement of client paths to the server's data roots, at the moment of use.

A client path is checked at the door for its form (no '..', names of at most
255 bytes) and becomes a `DataPath`: a relative path lies under the primary
root; an absolute one under the root it names, read lexically (longest
matching prefix, nothing resolved on disk), and is refused when it names
none. Every reader and writer opens it again when it uses it, relative to a
descriptor of its root, one component at a time with O_NOFOLLOW: a directory
swapped for a symbolic link after the check cannot redirect a read or a write.

A root may be written by clients as the server was given it or as that
resolves: `/data`, given to the server, that is a link to `/mnt/disk/data`
takes `/data/x.tif` and `/mnt/disk/data/x.tif` alike. Both name the same
folder, which the server itself reached through the link once, at start;
what the client writes after the root is confined as any relative path is.

Symbolic links are never followed, inside the root or out: a path that passes
through one, or names one, is PERMISSION_DENIED. One rule with nothing to
reason about (where a link leads, or led when the path was checked), and a
client cannot make links through the API anyway.

GDAL is handed the file this module opened, as `fd_path(fd)`, never a name to
resolve again.

Each root has a name ("data", "data2", ... by default, or given as `name=folder`).
A process whose environment holds RSGRPC_WORKER_DATA_ROOTS (`name=folder` pairs,
separated by os.pathsep), as a Dask worker on another machine does, opens each named
root at its own folder: the server and its workers may mount the same storage at
different paths. Confinement is the same wherever a path is opened.

A root may also be a prefix in S3-compatible object storage (`s3://bucket/prefix`,
`rsgrpc.engine.object_store`), written by clients as `s3://bucket/prefix/...` or as
GDAL's `/vsis3/bucket/prefix/...`. Its paths are checked for their form as any
others; they are read as `OpenedInput`s (GDAL's S3 driver) and written through
`rsgrpc.engine.partial_output.ObjectOutput`, whole or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rsgrpc.engine.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RsgrpcError,
)
from rsgrpc.engine.object_store import (
    MAX_KEY_BYTES,
    ObjectRoot,
    client_form,
    is_object_url,
    is_storage_error,
    posix_form,
    refusal,
)

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# Where an open descriptor has a name that leads to its file, not to a path.
_FD_DIRECTORY = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
ROOT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
WORKER_ROOTS_ENV = "RSGRPC_WORKER_DATA_ROOTS"


def default_root_name(place: int) -> str:
    """The name of the data root given `place`-th (from 1) without one."""
    return "data" if place == 1 else f"data{place}"


def named_root(text: str) -> tuple[str, Path | str]:
    """`name=folder` (a name of a letter, then up to 31 letters, digits, '_' or '-') or
    a folder alone: the name ("" without one) and the folder, or the object-storage URL
    (`s3://bucket/prefix`) as it is written."""
    name, separator, folder = text.partition("=")
    if not (separator and folder and ROOT_NAME.fullmatch(name)):
        name, folder = "", text
    return name, folder if is_object_url(folder) else Path(folder)


@functools.cache
def worker_mounts() -> dict[str, Path]:
    """This process's own folders for named data roots, from RSGRPC_WORKER_DATA_ROOTS
    (`name=folder` pairs separated by os.pathsep; empty parts skipped); empty where it is
    unset. Raises ValueError for a part that is not `name=folder`."""
    mounts: dict[str, Path] = {}
    for part in os.environ.get(WORKER_ROOTS_ENV, "").split(os.pathsep):
        if not part:
            continue
        name, folder = named_root(part)
        if not name or not isinstance(folder, Path):
            raise ValueError(f"{WORKER_ROOTS_ENV} holds {part!r}, not name=folder")
        mounts[name] = folder
    return mounts


def tidy_path(client_path: str) -> str:
    """A client path with '//' and '.' tidied away, as a `DataPath` shows it; an
    object-storage URL keeps its `s3://`."""
    return client_form(PurePosixPath(posix_form(client_path)))


def fd_path(fd: int) -> str:
    """A name of the file open as `fd`: opening it opens that file, whatever its path now."""
    return f"{_FD_DIRECTORY}/{fd}"


@dataclass(frozen=True)
class DataPath:
    """A client path under a data root, checked for its form; opened afresh at each use.

    `path` is as the client wrote it (with '/', '//' and '.' normalised away: relative
    to the primary root, or absolute), so that messages echo the client's own text;
    `relative` is the same path from `root`, the one it is opened by; `field` names it
    in errors. Workers receive it as it is and open it themselves.
    """

    # The server's own folder, or object-storage prefix: never in a message.
    root: Path | ObjectRoot = dataclasses.field(repr=False)
    path: str
    field: str
    relative: str = dataclasses.field(default="", repr=False)  # empty: `path` is relative
    # The roots it was checked against, for paths named relative to it (`data_path`).
    roots: DataRoot | None = dataclasses.field(default=None, repr=False, compare=False)
    # The root's name, by which a worker with mounts of its own finds it (`local_root`).
    root_name: str = dataclasses.field(default="", repr=False, compare=False)

    def __str__(self) -> str:
        return self.path

    @functools.cached_property
    def parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.relative or self.path).parts

    @functools.cached_property
    def identity(self) -> str:
        """The file this path names, the same whichever way a client writes it (relative,
        or absolute through either form of its root): to compare paths, never to show."""
        return os.path.join(str(self.root), *self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def store(self) -> ObjectRoot | None:
        """The object-storage root this path lies under; None for a folder's."""
        return self.root if isinstance(self.root, ObjectRoot) else None

    @property
    def local_root(self) -> Path:
        """The root as this process mounts it: the server's folder, or the one this
        process's RSGRPC_WORKER_DATA_ROOTS gives the root's name (`worker_mounts`)."""
        return worker_mounts().get(self.root_name, self.root)

    def beside(self, relative: str, *, field: str | None = None) -> DataPath:
        """The path `relative` (without '..') from this path's folder, under the same root.

        Raises PermissionDeniedError for '..' or an absolute path, InvalidArgumentError for
        an empty one or a name over 255 bytes; nothing is opened.
        """
        field = field or self.field
        pure = PurePosixPath(relative)
        metadata = {"field": field}
        if not relative or not pure.parts:
            raise InvalidArgumentError(f"{field} is empty", metadata=metadata)
        if pure.is_absolute() or ".." in pure.parts or "\x00" in relative:
            raise PermissionDeniedError(
                f"{field} {relative!r} does not stay under the folder of {self.path!r}",
                metadata=metadata,
            )
        for part in pure.parts:
            if len(part.encode()) > MAX_NAME_BYTES:
                raise InvalidArgumentError(
                    f"{field} has a name of {len(part.encode())} bytes; names are at most "
                    f"{MAX_NAME_BYTES}",
                    metadata=metadata,
                )
        shown = client_form(PurePosixPath(posix_form(self.path)).parent.joinpath(pure))
        relative_form = (
            PurePosixPath(*self.parts[:-1], *pure.parts).as_posix() if self.relative else ""
        )
        return DataPath(self.root, shown, field, relative_form, self.roots, self.root_name)

    def open_input(self) -> OpenedInput:
        """Open the input at this path for reading, as it is now: a regular file under a
        folder's root (`open_file`), or an object (which must exist). Raises as
        `open_file` does; an object storage that does not answer is UnavailableError."""
        store = self.store
        if store is None:
            fd = self.open_file()
            st = os.fstat(fd)
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            return OpenedInput(self, fd_path(fd), identity, st.st_size, fd=fd)
        with self.storage_errors():
            found = store.stat(self.parts)
        if found is None:
            raise NotFoundError(
                f"{self.field} {self.path!r} does not exist", metadata=self._metadata
            )
        return OpenedInput(self, store.gdal_name(self.parts), found.identity, found.size)

    @contextlib.contextmanager
    def storage_errors(self) -> Iterator[None]:
        """Object storage's failures within, as the client hears them of this path."""
        try:
            yield
        except RsgrpcError:
            raise
        except Exception as error:
            if not is_storage_error(error):
                raise
            raise refusal(error, self.field, self.path) from None

    def open_file(self) -> int:
        """Open the regular file at this path for reading; returns its descriptor.

        Raises NotFoundError if it does not exist, PermissionDeniedError if the path
        passes through or names a symbolic link, InvalidArgumentError if it is not a
        regular file (a directory, FIFO or device).
        """
        self._local_only()
        parent = self.open_parent(create=False)
        try:
            self._check_entry(parent, must_exist=True)
            try:
                fd = os.open(self.name, _FILE_FLAGS, dir_fd=parent)
            except OSError as error:
                raise self.refusal(error, parent, self.name, self.path) from None
        finally:
            os.close(parent)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since it was checked
            os.close(fd)
            raise InvalidArgumentError(
                f"{self.field} {self.path!r} is not a regular file", metadata=self._metadata
            )
        return fd

    def open_parent(self, *, create: bool) -> int:
        """Open the directory that holds this path's last component; returns its descriptor.

        With `create`, missing directories are made; without it, a missing one is
        NotFoundError. Raises PermissionDeniedError for a symbolic link on the way and
        InvalidArgumentError for a component that is not a directory.
        """
        self._local_only()
        try:
            fd = os.open(self.local_root, _DIRECTORY_FLAGS)
        except (OSError, ValueError):
            raise FailedPreconditionError(
                "the server's data root is not available", metadata=self._metadata
            ) from None
        try:
            for depth, part in enumerate(self.parts[:-1], start=1):
                shown = "/".join(self.parts[:depth])
                try:
                    child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise NotFoundError(
                            f"{self.field} {self.path!r}: directory {shown!r} does not exist",
                            metadata=self._metadata,
                        ) from None
                    child = self._make_directory(fd, part, shown)
                except OSError as error:
                    raise self.refusal(error, fd, part, shown) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_output(self, *, overwrite: bool) -> None:
        """Refuse, as the client should hear it, an output that cannot be written here:
        one inside a file or a link, one that is a directory or a link, or one that
        exists when `overwrite` is off. Changes nothing: missing directories are made
        only when the output is written. In object storage, only the last applies."""
        store = self.store
        if store is not None:
            with self.storage_errors():
                found = store.stat(self.parts)
            if found is not None and not overwrite:
                raise self.exists()
            return
        try:
            parent = self.open_parent(create=False)
        except NotFoundError:
            return  # its directories are made when it is written
        try:
            self._check_entry(parent, must_exist=False, overwrite=overwrite)
        finally:
            os.close(parent)

    def check_output_in(self, parent: int, *, overwrite: bool) -> None:
        """`check_output` for the last component, in its directory open as `parent`."""
        self._check_entry(parent, must_exist=False, overwrite=overwrite)

    def _check_entry(self, parent: int, *, must_exist: bool, overwrite: bool = True) -> None:
        try:
            st = os.stat(self.name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            if must_exist:
                raise NotFoundError(
                    f"{self.field} {self.path!r} does not exist", metadata=self._metadata
                ) from None
            return
        except OSError as error:
            raise self.refusal(error, parent, self.name, self.path) from None
        if stat.S_ISLNK(st.st_mode):
            raise self._link(self.path)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgumentError(
                f"{self.field} {self.path!r} is a directory", metadata=self._metadata
            )
        if must_exist and not stat.S_ISREG(st.st_mode):
            raise InvalidArgumentError(
                f"{self.field} {self.path!r} is not a regular file (a FIFO, socket or device)",
                metadata=self._metadata,
            )
        if not must_exist and not overwrite:
            raise self.exists()

    def exists(self) -> AlreadyExistsError:
        """The refusal of this output, which exists, with overwrite off."""
        return AlreadyExistsError(
            f"{self.field} {self.path!r} exists; set overwrite to replace it",
            metadata={**self._metadata, "path": self.path},
        )

    def _local_only(self) -> None:
        if self.store is not None:
            raise TypeError(f"{self.path!r} is in object storage: it has no folder to open")

    def _make_directory(self, parent: int, part: str, shown: str) -> int:
        try:
            os.mkdir(part, 0o777, dir_fd=parent)
        except FileExistsError:
            pass  # made meanwhile: opened below like any other
        except OSError as error:
            raise self.refusal(error, parent, part, shown) from None
        try:
            return os.open(part, _DIRECTORY_FLAGS, dir_fd=parent)
        except OSError as error:
            raise self.refusal(error, parent, part, shown) from None

    def refusal(self, error: OSError, parent: int, part: str, shown: str) -> RsgrpcError:
        """The client's error for `error`, met opening `part` (`shown` from the root)."""
        if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
            try:
                st = os.stat(part, dir_fd=parent, follow_symlinks=False)
            except OSError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                return self._link(shown)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                return InvalidArgumentError(
                    f"{self.field} {self.path!r}: {shown!r} is a file, not a directory",
                    metadata=self._metadata,
                )
        if error.errno == errno.ENOENT:
            return NotFoundError(
                f"{self.field} {self.path!r} does not exist", metadata=self._metadata
            )
        if error.errno in (errno.EACCES, errno.EPERM):
            return PermissionDeniedError(
                f"{self.field} {self.path!r}: the server may not open {shown!r}",
                metadata=self._metadata,
            )
        if error.errno == errno.ENAMETOOLONG:
            return InvalidArgumentError(
                f"{self.field} {self.path!r} is too long for the file system",
                metadata=self._metadata,
            )
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return ResourceExhaustedError(
                f"{self.field} {self.path!r}: the data root's disk is full", metadata=self._metadata
            )
        if error.errno == errno.EROFS:
            return FailedPreconditionError(
                f"{self.field} {self.path!r}: the data root is read-only", metadata=self._metadata
            )
        return RsgrpcError(f"{self.field} {self.path!r}: {shown!r}: {error.strerror}")

    def _link(self, shown: str) -> PermissionDeniedError:
        return PermissionDeniedError(
            f"{self.field} {self.path!r}: {shown!r} is a symbolic link; links are not "
            "followed, so that no path leads outside the data root",
            metadata=self._metadata,
        )

    @property
    def _metadata(self) -> dict[str, str]:
        return {"field": self.field}


@dataclass
class OpenedInput:
    """An input as opened at one moment: the name GDAL reads it by, what identifies its
    content (a file's device, inode, size and times; an object's version and size) and
    its size. A file stays open until `close` (or the end of a `with`), so that GDAL
    reads the very file that was checked (`fd_path`)."""

    path: DataPath
    gdal_name: str
    identity: tuple[Any, ...]
    size: int
    fd: int = -1

    def gdal_options(self) -> dict[str, str]:
        """GDAL's options to open it with (`ObjectRoot.gdal_options`; none for a file)."""
        store = self.path.store
        return store.gdal_options() if store is not None else {}

    def read_prefix(self, limit: int) -> bytes:
        """Up to `limit` bytes from its start."""
        store = self.path.store
        if store is not None:
            if not self.size:  # a range of an empty object is an error to S3
                return b""
            with self.path.storage_errors():
                return store.read(self.path.parts, limit)
        chunks, size = [], 0
        while size < limit:
            chunk = os.pread(self.fd, limit - size, size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OpenedInput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class DataRoot:
    """The folders under which every client path must resolve.

    `root` is the primary: relative paths resolve under it. `others` are reached by
    absolute paths only. Each is a folder or an object-storage prefix (`ObjectRoot`).
    `prefixes` are the absolute forms a client may write for each root (a folder as the
    server was given it, and resolved; an object root as `ObjectRoot.written_forms`),
    longest first, so that a root inside another is matched before it. `names` are the roots' names, in order
    (empty: "data", "data2", ... by place).
    """

    root: Path | ObjectRoot
    others: tuple[Path | ObjectRoot, ...] = ()
    prefixes: tuple[tuple[PurePosixPath, Path | ObjectRoot], ...] = dataclasses.field(
        default=(), repr=False
    )
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.prefixes:  # a root made directly, not by `at`: written as it is
            forms = [(form, root) for root in self.roots for form in _written_forms(root)]
            object.__setattr__(self, "prefixes", _longest_first(forms))
        if not self.names:
            names = tuple(default_root_name(place) for place in range(1, len(self.roots) + 1))
            object.__setattr__(self, "names", names)

    @property
    def roots(self) -> tuple[Path | ObjectRoot, ...]:
        """Every root, the primary first."""
        return (self.root, *self.others)

    @property
    def named(self) -> dict[str, Path | ObjectRoot]:
        """Each root by its name."""
        return dict(zip(self.names, self.roots, strict=True))

    @classmethod
    def at(cls, root: str | Path, *others: str | Path, names: tuple[str, ...] = ()) -> DataRoot:
        """The data roots at `root` (the primary) and `others`, each a folder (made if
        missing) or an object-storage prefix (`s3://bucket/prefix`, `ObjectRoot.parse`), named
        `names` (an empty name, or none given, is "data", "data2", ... by place); a root
        given twice, in either form,
        counts once, under its first name. Raises ValueError for a name that is not a
        root name or is given twice, RuntimeError where open files cannot be named by
        descriptor (`fd_path`), which confinement needs."""
        given_roots = (root, *others)
        names = tuple(
            name or default_root_name(place)
            for place, name in enumerate(names or ("",) * len(given_roots), start=1)
        )
        for name in names:
            if not ROOT_NAME.fullmatch(name):
                raise ValueError(
                    f"data root name {name!r} is not a letter, then up to 31 letters, digits, "
                    "'_' or '-'"
                )
        resolved: dict[Path | ObjectRoot, str] = {}
        forms: list[tuple[PurePosixPath, Path | ObjectRoot]] = []
        for given, name in zip(given_roots, names, strict=True):
            if is_object_url(given):
                store = ObjectRoot.parse(given)
                resolved.setdefault(store, name)
                forms += [(form, store) for form in store.written_forms]
                continue
            # As given, made absolute lexically: the form a client script holds.
            written = PurePosixPath(os.path.abspath(os.path.expanduser(given)))
            path = Path(written).resolve()
            path.mkdir(parents=True, exist_ok=True)
            _check_fd_paths(path)
            resolved.setdefault(path, name)
            forms += [(written, path), (PurePosixPath(path), path)]
        if len(set(resolved.values())) != len(resolved):
            raise ValueError(f"data root names are given twice: {list(resolved.values())}")
        paths = list(resolved)
        return cls(paths[0], tuple(paths[1:]), _longest_first(forms), tuple(resolved.values()))

    def path(self, client_path: str, *, field: str = "path") -> DataPath:
        """`client_path` checked for its form: without '..', names of at most 255 bytes,
        relative (to the primary root) or absolute under one of the roots. Nothing is
        opened: each use opens it (`DataPath`)."""
        metadata = {"field": field}
        if not client_path:
            raise InvalidArgumentError(f"{field} is empty", metadata=metadata)
        shown = client_path if len(client_path) <= 200 else client_path[:200] + "..."
        try:
            size = len(client_path.encode())
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"{field} is not valid UTF-8", metadata=metadata) from None
        if "\x00" in client_path:
            raise InvalidArgumentError(
                f"{field} {shown!r} holds a NUL character", metadata=metadata
            )
        if size > MAX_PATH_BYTES:
            raise InvalidArgumentError(
                f"{field} is {size} bytes long; paths are at most {MAX_PATH_BYTES}",
                metadata=metadata,
            )
        pure = PurePosixPath(posix_form(client_path))
        if client_path.startswith("\\"):
            raise PermissionDeniedError(
                f"{field} {shown!r} is not a path under the server's data roots; paths are "
                "relative to the data root, or absolute under one of the server's data roots",
                metadata=metadata,
            )
        if ".." in pure.parts:
            raise PermissionDeniedError(f"{field} {shown!r} contains '..'", metadata=metadata)
        root, relative = self.root, pure
        absolute = pure.is_absolute()
        if absolute:
            pure = PurePosixPath("/", *pure.parts[1:])  # POSIX keeps a leading '//'
            root, relative = self._under(pure, shown, field)
        if not relative.parts:
            raise InvalidArgumentError(f"{field} {shown!r} names the data root", metadata=metadata)
        for part in relative.parts:
            if len(part.encode()) > MAX_NAME_BYTES:
                raise InvalidArgumentError(
                    f"{field} {shown!r} has a name of {len(part.encode())} bytes; "
                    f"names are at most {MAX_NAME_BYTES}",
                    metadata=metadata,
                )
        if isinstance(root, ObjectRoot) and len(root.key(relative.parts).encode()) > MAX_KEY_BYTES:
            raise InvalidArgumentError(
                f"{field} {shown!r} is too long for object storage: its key would be over "
                f"{MAX_KEY_BYTES} bytes",
                metadata=metadata,
            )
        relative_form = relative.as_posix() if absolute else ""
        name = self.names[self.roots.index(root)]
        return DataPath(root, client_form(pure), field, relative_form, self, name)

    def _under(
        self, absolute: PurePosixPath, shown: str, field: str
    ) -> tuple[Path | ObjectRoot, PurePosixPath]:
        """The root `absolute` lies under, lexically, and the path from it; the longest
        matching prefix wins. Outside every root is PERMISSION_DENIED, in a message that
        names no root: the roots are the server's own paths."""
        for prefix, root in self.prefixes:
            if absolute.is_relative_to(prefix):
                return root, absolute.relative_to(prefix)
        raise PermissionDeniedError(
            f"{field} {shown!r} is an absolute path outside the server's data roots",
            metadata={"field": field},
        )

    def output(self, client_path: str, *, field: str = "output path", overwrite: bool) -> DataPath:
        """An output's path, once checked writable (`DataPath.check_output`)."""
        target = self.path(client_path, field=field)
        target.check_output(overwrite=overwrite)
        return target


def _written_forms(root: Path | ObjectRoot) -> tuple[PurePosixPath, ...]:
    if isinstance(root, ObjectRoot):
        return root.written_forms
    return (PurePosixPath(root),)


def _longest_first(
    forms: list[tuple[PurePosixPath, Path | ObjectRoot]],
) -> tuple[tuple[PurePosixPath, Path | ObjectRoot], ...]:
    """Each written form once (the first root given it keeps it), longest first."""
    unique = dict(reversed(forms))
    return tuple(sorted(unique.items(), key=lambda form: len(form[0].parts), reverse=True))


def _check_fd_paths(root: Path) -> None:
    """Raise RuntimeError unless an open descriptor of `root` can be named (`fd_path`)."""
    fd = os.open(root, _DIRECTORY_FLAGS)
    try:
        st, named = os.fstat(fd), os.stat(fd_path(fd))
    except OSError as error:
        raise RuntimeError(f"{_FD_DIRECTORY} is not usable: {error.strerror}") from None
    finally:
        os.close(fd)
    if (st.st_dev, st.st_ino) != (named.st_dev, named.st_ino):
        raise RuntimeError(f"{_FD_DIRECTORY} does not name open files")
