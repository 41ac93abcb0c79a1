"""Test-session settings shared by every test module."""
import os

# Spinning OpenMP threads starve data-loader workers and torchrun peers on a 2-core CI machine; this must be
# set before torch is imported (conftest runs first). An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
