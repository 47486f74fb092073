"""One server per module (the ``server`` fixture of tests/conftest.py), the scene written
in its data root, and a way to run a snippet against it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.compat.harness import Scene, SnippetRun, make_scene, run_snippet


@pytest.fixture(scope="module")
def scene(server) -> Scene:
    running, _ = server
    return make_scene(running.data_root.root.resolve())


@pytest.fixture
def run(server, scene, tmp_path) -> Callable[[str], SnippetRun]:
    """``run(name)`` runs ``snippets/{name}.py`` against the module's server."""
    running, _ = server
    target = f"127.0.0.1:{running.port}"
    return lambda name: run_snippet(name, scene.data, target, tmp_path)
