"""The committed stubs are what the protos generate, and the protos pass buf lint."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The test extra installs grpcio-tools, mypy-protobuf and buf-bin beside this interpreter,
# which need not be on PATH (CI calls .venv/bin/python directly).
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}


def test_committed_stubs_match_the_protos(tmp_path):
    result = subprocess.run(
        [str(ROOT / "protos" / "generate.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated, "protoc generated nothing"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert stale == [], f"regenerate with protos/generate.sh: {stale}"
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "rsgrpc" / "v1").glob("*_pb2*.py*"))
    assert committed == generated


def test_buf_lint_is_clean():
    buf = shutil.which("buf", path=ENV["PATH"])
    assert buf is not None, "buf is a test dependency (buf-bin)"
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
