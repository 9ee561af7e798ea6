"""Shared fixtures: a marker path that a malicious payload would create if it ever ran."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def marker(tmp_path: Path):
    """The file a harmless payload would touch; every test using it asserts it never appears."""
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a payload was executed"
