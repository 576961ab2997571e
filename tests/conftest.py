"""Shared fixtures."""

from __future__ import annotations

import pytest

from helpers.configs import MODEL_OPTIONS, compose


@pytest.fixture(scope="session")
def model_configs():
    """{(option, scale): model.net config} for every model option and scale."""
    return {
        (opt, s): compose([f"model={opt}", f"data.scale={s}"]).model
        for opt in MODEL_OPTIONS
        for s in (2, 3, 4)
    }
