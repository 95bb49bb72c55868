from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)  # two CPU cores: keep tests from fighting over them, and timings steadier


@pytest.fixture(autouse=True)
def _grad_mode_is_left_on() -> Iterator[None]:
    """A test that leaves autograd switched off fails here, by name, instead of every test after it
    failing with "element 0 of tensors does not require grad"."""
    yield
    left_on = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    assert left_on, "the test left torch's grad mode off"
