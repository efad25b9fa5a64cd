"""Shared pytest fixtures: access to the reference test vectors and the repository root."""

import json
import os
import sys

import numpy as np
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO_ROOT, "tests", "data")

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def load_vectors(name: str) -> dict:
    """Load `tests/data/<name>` (a .npz of reference vectors) into a plain dict of NumPy arrays."""
    with np.load(os.path.join(DATA_DIR, name), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def json_value(array: np.ndarray):
    """Decode a 0-d unicode array holding JSON text (how the vectors store non-tensor values)."""
    return json.loads(str(array))


def assert_close(actual, expected, atol_scale: float, name: str = "", allowed_fraction: float = 0.0):
    """Assert max|actual - expected| <= atol_scale * max(1, max|expected|).

    `allowed_fraction` lets a tiny share of elements exceed the bound (clamp boundaries, see the vectors README).
    """
    actual = actual.detach().cpu().double().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    bound = atol_scale * max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
    diff = np.abs(actual - expected)
    if allowed_fraction > 0:
        bad = np.count_nonzero(diff > bound)
        assert bad <= allowed_fraction * diff.size, f"{name}: {bad}/{diff.size} elements exceed {bound:g}"
    else:
        worst = float(diff.max()) if diff.size else 0.0
        assert worst <= bound, f"{name}: max abs diff {worst:g} exceeds {bound:g}"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """The vectors were produced single-threaded; keep float reductions in the same order where we can."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def no_cuda(monkeypatch):
    """The machine train.py's recorded outputs were taken on: no CUDA device, no torchrun (test_train*.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
