"""The committed stubs are what the protos generate, and the protos pass buf lint."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_the_protos(tmp_path):
    subprocess.run(
        [str(ROOT / "protos" / "generate.sh"), str(tmp_path)], check=True, capture_output=True
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated, "protoc generated nothing"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert stale == [], f"regenerate with protos/generate.sh: {stale}"
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "rsgrpc" / "v1").glob("*_pb2*.py*"))
    assert committed == generated


@pytest.mark.skipif(shutil.which("buf") is None, reason="buf is not installed (buf-bin)")
def test_buf_lint_is_clean():
    result = subprocess.run(["buf", "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
