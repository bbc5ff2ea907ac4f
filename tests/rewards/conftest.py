"""Fixtures for the reward tests: the fake judge server (see fake_judge.py)."""

from __future__ import annotations

import pytest
from fake_judge import start_fake_judge


@pytest.fixture(scope="session")
def judge_server():
    """(base_url, FakeJudge) of a judge server running for the whole session."""
    server, base_url, state = start_fake_judge()
    yield base_url, state
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_judge(judge_server):
    """The session judge server, with its log cleared for this test."""
    base_url, state = judge_server
    state.reset()
    return base_url, state
