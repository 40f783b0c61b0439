"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rlm_toolkit.server import LocalServer


@pytest.fixture(scope="session")
def local_server() -> Iterator[LocalServer]:
    """One OpenAI-compatible LocalServer (on its own thread) for the whole session."""
    with LocalServer() as server:
        yield server


@pytest.fixture
def server(local_server: LocalServer) -> LocalServer:
    """The session LocalServer with no queued replies, faults or recorded requests."""
    local_server.reset()
    local_server.latency = 0.0
    return local_server


@pytest.fixture(params=["rust", "python"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using this runs once per callbacks backend; it is also the default for the test's objects."""
    monkeypatch.setenv("RLM_TOOLKIT_BACKEND", request.param)
    return request.param
