"""hooked.util: the one home of batching and temporary torch thread counts."""
import pytest
import torch

from hooked.util import batch_slices, batched, torch_threads


def test_batches_cover_everything_once():
    assert list(batched(list("abcde"), 2)) == [["a", "b"], ["c", "d"], ["e"]]
    assert list(batch_slices(5, 5)) == [slice(0, 5)]
    assert list(batched([], 3)) == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            list(batched([1, 2], bad))


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
