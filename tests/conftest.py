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
