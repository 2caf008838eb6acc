"""Shared fixtures."""
import os

import pytest
import torch

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # the cores shared out between the workers, not each taking all
    torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: on a loaded machine, threads cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The longest test files (minutes of training runs each): started first, so that with pytest-xdist
# (one file per worker) none of them is left running alone at the end.
LONGEST_FILES = ("test_resume.py", "test_benchmarks.py", "test_distributed.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FILES)  # stable: the rest keep their order
