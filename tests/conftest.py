"""Shared fixtures: generated datasets, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.synth import SynthConfig, generate

pytest_plugins = ["tests.redis_server", "tests.service_stack"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few thousand rows: enough to exercise every code path in seconds."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    generate(
        SynthConfig(items=300, users=400, train_rows=3000, valid_rows=600, test_rows=600, seed=7),
        out,
    )
    return out


@pytest.fixture(scope="session")
def learnable_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough that the planted structure is learnable in a couple of CPU epochs."""
    out = tmp_path_factory.mktemp("learnable") / "data"
    generate(
        SynthConfig(
            items=2000, users=4000, train_rows=60_000, valid_rows=10_000, test_rows=5000, seed=11
        ),
        out,
    )
    return out
