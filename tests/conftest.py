"""Suite-wide settings.

Hypothesis: CI (``CI=true``, as ``.ci/run`` runs) uses a derandomized profile so a submission's
result does not depend on the draw; locally the default random profile keeps exploring (and its
example database replays any failure it finds).

``one_omp_thread``: a module's in-process trainer runs (and the ranks they start) use one OpenMP
thread, as a launcher would give each of the ranks sharing this machine's cores.
"""

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="module")
def one_omp_thread():
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if old is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = old
