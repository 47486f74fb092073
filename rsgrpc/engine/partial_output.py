"""An output being written: a locked temporary file beside it, published whole or removed.

Every output under the data root (a tool's raster, a downloaded answer) is
written through `PartialOutput`. Its directory is opened under the root when
writing starts (`DataPath.open_parent`, no link followed), and the file is
made, renamed and removed relative to that open directory: a directory swapped
for a link while the job waited cannot redirect any of it. The temporary file
is named by `rsgrpc.engine.instance.partial_name` and holds an exclusive
`flock` from its creation until it is renamed or removed, so a starting server
can tell what a dead instance left from work in progress.

An output in object storage (`ObjectOutput`) is written the same way in the
server's staging folder (`rsgrpc.engine.object_store.staging_folder`, inside its
instance folder) and uploaded when it is published: the object appears whole or
not at all. `partial_output` makes the one or the other for a target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path

from rsgrpc.engine.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RsgrpcError,
)
from rsgrpc.engine.instance import lock_if_unheld, partial_name
from rsgrpc.engine.object_store import staging_folder
from rsgrpc.engine.paths import DataPath, fd_path

# A hard link across these is refused: the bytes are copied instead.
_NO_LINK = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP}
)
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def partial_output(target: DataPath, *, overwrite: bool) -> PartialOutput:
    """The output being written to `target`: beside it in its folder, or staged for its
    object storage."""
    kind = PartialOutput if target.store is None else ObjectOutput
    return kind(target, overwrite=overwrite)


class PartialOutput:
    """The temporary file of `target`, open as `fd` for reading and writing.

    Use as a context manager: entering opens the output's directory (making the
    missing ones), checks the output again (`DataPath.check_output_in`) and creates
    the file; `publish()` moves it to its name; leaving without publishing removes it.
    """

    def __init__(self, target: DataPath, *, overwrite: bool) -> None:
        self.target = target
        self.overwrite = overwrite
        self.fd = -1
        self._directory: int | None = None
        self._name: str | None = None

    def __enter__(self) -> PartialOutput:
        self._directory = self.target.open_parent(create=True)
        try:
            self.target.check_output_in(self._directory, overwrite=self.overwrite)
            self.fd, self._name = self._create()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _create(self) -> tuple[int, str]:
        # Made, then locked: a server sweeping the folder in between may take the file
        # for a dead instance's and remove it, so the name is checked once locked.
        while True:
            name = partial_name(self.target.name)
            try:
                fd = os.open(name, _CREATE_FLAGS, 0o666, dir_fd=self._directory)
            except OSError as error:
                raise self.target.refusal(error, self._directory, name, self.target.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                named = os.stat(name, dir_fd=self._directory, follow_symlinks=False)
            except (BlockingIOError, FileNotFoundError):
                named = None  # a sweep holds it or has removed it: start again
            if named is not None and os.path.samestat(named, os.fstat(fd)):
                return fd, name
            os.close(fd)

    def restart(self) -> int:
        """Start the output again in a new temporary file; returns the descriptor of the
        previous one, whose name is already gone: the caller reads it, then closes it."""
        previous, previous_name = self.fd, self._name
        self.fd, self._name = self._create()
        os.unlink(previous_name, dir_fd=self._directory)
        return previous

    def copy_from(self, source: Path) -> None:
        """Write the bytes of `source`, a file of the server's own, into this output.

        A full disk is ResourceExhaustedError; errors never name `source`.
        """
        try:
            with source.open("rb") as reader, open(self.fd, "wb", closefd=False) as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
        except OSError as error:
            raise self._write_error(error) from None

    def write(self, data: bytes) -> None:
        """Write `data` into this output; a full disk is ResourceExhaustedError."""
        try:
            with open(self.fd, "wb", closefd=False) as writer:
                writer.write(data)
        except OSError as error:
            raise self._write_error(error) from None

    def _write_error(self, error: OSError) -> RsgrpcError:
        """What the client hears of a failed write: never a path of the server's."""
        target = self.target
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return ResourceExhaustedError(
                f"{target.field} {target.path!r}: the data root's disk is full"
            )
        return RsgrpcError(f"{target.field} {target.path!r} could not be written: {error.strerror}")

    def link_from(self, source: Path) -> bool:
        """Make this output a hard link to ``source`` (a file of the server's own); False
        when the file systems or permissions do not allow it (then copy instead).

        The link is made under a new temporary name in the output's open directory, locked
        like the temporary file it then takes the place of, so the output is still
        published whole or not at all, and a starting server's sweep sees it as work in
        progress.
        """
        directory, current = self._directory, self._name
        if directory is None or current is None:
            raise RuntimeError("link_from needs an entered PartialOutput")
        name = partial_name(self.target.name)
        try:
            os.link(source, name, dst_dir_fd=directory, follow_symlinks=False)
        except OSError as error:
            if error.errno in _NO_LINK:
                return False
            raise RsgrpcError(
                f"{self.target.field} {self.target.path!r} could not be written: {error.strerror}"
            ) from None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=directory)
            return False
        try:
            # Another job linking the same cache entry holds its lock: copy instead.
            ours = lock_if_unheld(fd) and os.path.samestat(
                os.stat(name, dir_fd=directory, follow_symlinks=False), os.fstat(fd)
            )
        except FileNotFoundError:
            ours = False
        if not ours:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=directory)
            return False
        # The link becomes the temporary file, and the empty one made first goes. Renaming
        # the link over it instead would make ext4 write the linked file's data out first.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(current, dir_fd=directory)
        os.close(self.fd)
        self.fd, self._name = fd, name
        return True

    def publish(self) -> int:
        """Move the finished file to its name; returns its size in bytes.

        With overwrite off, an output made meanwhile is kept: AlreadyExistsError.
        """
        directory, name, target = self._directory, self._name, self.target
        try:
            if self.overwrite:
                os.replace(name, target.name, src_dir_fd=directory, dst_dir_fd=directory)
            else:
                # link() refuses to replace, so an output created meanwhile is kept.
                os.link(
                    name,
                    target.name,
                    src_dir_fd=directory,
                    dst_dir_fd=directory,
                    follow_symlinks=False,
                )
                os.unlink(name, dir_fd=directory)
        except FileExistsError:
            raise AlreadyExistsError(
                f"{target.field} {target.path!r} appeared while the job ran; overwrite is off",
                metadata={"path": target.path},
            ) from None
        except OSError as error:
            if error.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise InvalidArgumentError(
                    f"{target.field} {target.path!r} became a directory while the job ran",
                    metadata={"path": target.path},
                ) from None
            raise RsgrpcError(
                f"{target.field} {target.path!r} could not be put in place: {error.strerror}"
            ) from None
        self._name = None
        return os.fstat(self.fd).st_size

    def unpublish(self) -> None:
        """Remove the file `publish()` put in place, if its name still leads to it: used
        when an output of several files cannot be published whole."""
        directory, name = self._directory, self.target.name
        try:
            if os.path.samestat(
                os.stat(name, dir_fd=directory, follow_symlinks=False), os.fstat(self.fd)
            ):
                os.unlink(name, dir_fd=directory)
        except FileNotFoundError:
            pass

    def __exit__(self, *exc_info: object) -> None:
        if self._name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name, dir_fd=self._directory)
            self._name = None
        # Closed after the name is gone, so the lock covers the file's whole life.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._directory is not None:
            os.close(self._directory)
            self._directory = None


class ObjectOutput(PartialOutput):
    """An output in object storage: written in the server's staging folder as a
    `PartialOutput` is beside its target, and uploaded by `publish()`."""

    def __init__(self, target: DataPath, *, overwrite: bool) -> None:
        super().__init__(target, overwrite=overwrite)
        self._published: str | None = None  # the version uploaded, for `unpublish`

    def __enter__(self) -> ObjectOutput:
        self.target.check_output(overwrite=self.overwrite)
        folder = staging_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._directory = os.open(folder, _DIRECTORY_FLAGS)
        except OSError as error:
            raise self._write_error(error) from None
        try:
            self.fd, self._name = self._create()
        except BaseException:
            self.__exit__()
            raise
        return self

    def publish(self) -> int:
        """Upload the finished file as the object; returns its size in bytes.

        With overwrite off, an object made meanwhile is kept: AlreadyExistsError (the
        check and the upload are two requests: a writer between them is overwritten).
        """
        target, store = self.target, self.target.store
        with target.storage_errors():
            if not self.overwrite and store.stat(target.parts) is not None:
                raise AlreadyExistsError(
                    f"{target.field} {target.path!r} appeared while the job ran; overwrite is off",
                    metadata={"path": target.path},
                )
            store.upload(target.parts, fd_path(self.fd))
            uploaded = store.stat(target.parts)
        self._published = uploaded.etag if uploaded is not None else None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._name, dir_fd=self._directory)
        self._name = None
        return os.fstat(self.fd).st_size

    def unpublish(self) -> None:
        """Remove the object `publish()` uploaded, if it is still that version."""
        target, store = self.target, self.target.store
        with target.storage_errors():
            found = store.stat(target.parts)
            if found is not None and found.etag == self._published:
                store.delete(target.parts)
