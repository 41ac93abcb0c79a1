"""Test-session settings shared by every test module."""
import os

# Spinning OpenMP threads starve data-loader workers and torchrun peers on a 2-core CI machine; this must be
# set before torch is imported (conftest runs first). An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


import pytest  # noqa: E402  (after the environment setting above, which must precede torch)


@pytest.fixture
def one_thread():
    """One torch thread for a test: the CI and development machines have 2 shared cores, and a second
    thread per test oversubscribes them (up to 10x slower). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
