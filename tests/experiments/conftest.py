"""Fixtures for the experiment tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.experiments.util import write_fake_cifar


@pytest.fixture(scope="session")
def fake_cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding a fake extracted CIFAR-10 (100 train, 20 test images)."""
    return write_fake_cifar(tmp_path_factory.mktemp("fake_cifar"))
