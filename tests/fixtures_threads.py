"""Thread fixtures for the heavy model tests (training, quantization, export).

    one_thread   module-scoped: torch on one thread for the whole module, the old count restored
                 after. Not autouse (conftest loads every fixtures_*.py globally): a module asks
                 for it with `pytestmark = pytest.mark.usefixtures("one_thread")`.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Training, quantization and export on one thread: oversubscribed threads crawl on a shared machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
