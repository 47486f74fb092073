"""Output bytes appended past the page cache, or through it where the file system
refuses direct writes: the file holds exactly what was appended, where `append` said."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import numpy as np
import pytest

from rsgrpc.engine import appender as appender_module
from rsgrpc.engine.appender import ALIGN, STAGE_BYTES, FileAppender

HEADER = b"header: kept as it is"


def _pieces() -> list[bytes]:
    """Sizes around the stage's and the alignment's edges, an empty one among them."""
    rng = np.random.default_rng(3)
    sizes = [1, ALIGN - 1, ALIGN, 0, STAGE_BYTES - 3, 7, 2 * STAGE_BYTES + 11, 5000]
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


def _append_all(path: Path, direct: bool = True) -> tuple[FileAppender, list[int], list[bytes]]:
    path.write_bytes(HEADER)
    appender = FileAppender(path, len(HEADER), direct=direct)
    pieces = _pieces()
    offsets = [appender.append(piece) for piece in pieces]
    appender.close()
    return appender, offsets, pieces


def _check(path: Path, appender: FileAppender, offsets: list[int], pieces: list[bytes]) -> None:
    data = path.read_bytes()
    assert data[: len(HEADER)] == HEADER
    assert offsets[0] == ALIGN  # the first byte appended starts an aligned block
    assert len(data) == appender.end == offsets[-1] + len(pieces[-1])
    for offset, piece in zip(offsets, pieces, strict=True):
        assert data[offset : offset + len(piece)] == piece
    assert offsets == [offsets[0] + sum(map(len, pieces[:i])) for i in range(len(pieces))]


def _direct_io_works_in(folder: Path) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError:
        return False
    return True


def test_appended_bytes_land_where_append_said(tmp_path):
    path = tmp_path / "out.bin"
    appender, offsets, pieces = _append_all(path)
    _check(path, appender, offsets, pieces)


def test_an_appender_asked_for_cached_writes_lands_the_same_bytes(tmp_path):
    path = tmp_path / "out.bin"
    appender, offsets, pieces = _append_all(path, direct=False)
    assert not appender.direct
    _check(path, appender, offsets, pieces)


def test_writes_bypass_the_page_cache_where_the_file_system_allows(tmp_path):
    if not _direct_io_works_in(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    path = tmp_path / "out.bin"
    path.write_bytes(HEADER)
    appender = FileAppender(path, len(HEADER))
    try:
        assert appender.direct
        assert fcntl.fcntl(appender._fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        appender.abandon()


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")
def test_a_file_system_that_refuses_direct_writes_gets_the_same_bytes_through_the_cache(
    tmp_path, monkeypatch
):
    real_open = os.open

    def refuse_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")  # as older tmpfs does
        return real_open(path, flags, *args)

    monkeypatch.setattr(appender_module.os, "open", refuse_direct)
    path = tmp_path / "out.bin"
    appender, offsets, pieces = _append_all(path)
    assert not appender.direct
    _check(path, appender, offsets, pieces)


def test_direct_writes_refused_midway_go_on_through_the_cache(tmp_path, monkeypatch):
    if not _direct_io_works_in(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    real_pwrite = os.pwrite

    def refuse_direct(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(appender_module.os, "pwrite", refuse_direct)
    path = tmp_path / "out.bin"
    appender, offsets, pieces = _append_all(path)
    assert not appender.direct
    _check(path, appender, offsets, pieces)


def test_an_abandoned_appender_writes_nothing_more(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(HEADER)
    appender = FileAppender(path, len(HEADER))
    appender.append(b"x" * 100)
    appender.abandon()
    assert path.read_bytes() == HEADER
