"""Shared fixtures: the read-only shared folder and the devices to test on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One thread per process: the tests start worker processes beside this one on small machines,
# and results must not depend on how many threads a process happens to get.
os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"



@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (skip where a checkout has none)."""
    if not SHARED.is_dir():
        pytest.skip(f"no shared folder at {SHARED}")
    return SHARED


@pytest.fixture(params=[
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
])
def device(request) -> str:
    """Each test using this fixture runs on the CPU, and on CUDA where a GPU is present."""
    return request.param
