import pytest
import torch


@pytest.fixture
def torch_threads():
    """Restores torch's thread count: the in-process benchmarks set one thread."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
