"""Fixtures shared by the test files: the synthetic cohort maker.

Each test file keeps its own module-scoped cohort fixture (its name, size, seed and spacing are its own) and builds
it with :func:`cohort_factory`, so the cohort is made once per module in its own temporary folder, as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# ANTs registrations are bit-reproducible only on one ITK thread with a fixed seed (docs/raw.md), and ITK reads its
# thread count once per process: set both before any test imports ANTs (subprocesses inherit them), so that the raw
# path's checks do not depend on which test happened to call ANTs first
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("ANTS_RANDOM_SEED", "7")

# Property tests (hypothesis) are reproducible on any machine: examples come from a fixed seed (derandomize), none is
# stored between runs, no deadline (a shared 2-core machine has slow moments). Each test sets its own max_examples to
# keep the fast suite within its 2-minute budget;
settings.register_profile(
    "qrvae",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "qrvae"))


@pytest.fixture(autouse=True)
def _torch_global_state() -> Any:
    """Every test starts with the process's torch settings and leaves them so: a test that changes the thread count,
    the default dtype or the deterministic flag must not change the figures of the tests after it (float results of
    the network depend on the thread count, and some tests compare two runs bit for bit)."""
    import torch

    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    deterministic, mkldnn = torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.enabled
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.mkldnn.enabled = mkldnn


@pytest.fixture(scope="session")
def cohort_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(basename, subfolder=None, **settings) -> datalist``: :func:`monai_qrvae.data.make_cohort` with
    ``settings`` in a new temporary folder named after ``basename`` (in its ``subfolder`` when given)."""
    from monai_qrvae.data import make_cohort

    def make(basename: str, subfolder: str | None = None, **settings: Any) -> Path:
        root = tmp_path_factory.mktemp(basename)
        return Path(make_cohort(root / subfolder if subfolder else root, **settings))

    return make
