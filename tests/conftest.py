import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# keep tests fast and deterministic on 2 cores
torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_script(*args, env=None, cwd=None, timeout=600):
    """Run one of the project's scripts in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def script():
    return run_script


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny models run fastest on one thread, which also does not stall while other processes hold
    the cores (utils.setup_threads leaves the count alone when OMP_NUM_THREADS is set)."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` when no CUDA GPU is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
