"""The fingerprint: every implementation equals the spec; it sees every bit, swaps and cancelling errors."""

from __future__ import annotations

import pytest
import torch

from lagoon.sdc import native
from lagoon.sdc.fingerprint import Fingerprinter, reference_digest, torch_digest
from lagoon.sdc.inject import flip_bit

SHAPES_AND_DTYPES = [
    ((5,), torch.float32), ((1024,), torch.float32), ((1025,), torch.float32), ((3, 700), torch.bfloat16),
    ((7,), torch.float16), ((11,), torch.int8), ((3,), torch.bool), ((1300, 2), torch.float64), ((0,), torch.float32),
    ((2, 1024 + 3), torch.bfloat16),
]


def _tensor(shape, dtype):
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if not dtype.is_floating_point:
        return torch.randint(-100, 100, shape, dtype=dtype)
    return torch.randn(shape).to(dtype)


@pytest.mark.parametrize("shape,dtype", SHAPES_AND_DTYPES)
def test_torch_and_native_kernels_equal_the_reference(shape, dtype):
    tensor = _tensor(shape, dtype)
    expected = reference_digest(tensor, lanes=4)
    assert torch_digest(tensor, lanes=4).tolist() == expected
    assert native.available()
    assert native.digest_many([tensor], lanes=4, threads=2)[0].tolist() == expected


def test_large_tensors_agree_across_kernels_thread_counts_and_chunking():
    tensor = torch.randn(700, 1031)  # 705 rows of 1024 words and a ragged tail row
    torch_result = torch_digest(tensor, lanes=3, chunk_rows=64)
    assert torch_result.tolist() == torch_digest(tensor, lanes=3, chunk_rows=4096).tolist()
    for threads in (1, 2, 3, 8):
        assert native.digest_many([tensor], lanes=3, threads=threads)[0].tolist() == torch_result.tolist()


@pytest.mark.slow
def test_compiled_kernel_equals_the_eager_one():
    tensor = torch.randn(3, 1500)
    assert torch_digest(tensor, compiled=True).tolist() == torch_digest(tensor).tolist()


def test_fingerprinter_digests_a_list_into_one_table():
    tensors = [torch.randn(4, 4), torch.randn(3000).bfloat16(), torch.zeros(2, dtype=torch.int64)]
    for kernel in ("native", "torch"):
        table = Fingerprinter(lanes=4, kernel=kernel).digest(tensors)
        assert table.shape == (3, 4) and table.dtype == torch.int64
        assert table.tolist() == [reference_digest(t) for t in tensors]
        assert int(table.min()) >= 0 and int(table.max()) < 2**32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_single_bit_flip_changes_every_lane(dtype):
    tensor = torch.randn(2053).to(dtype)
    fingerprinter = Fingerprinter(lanes=4)
    clean = fingerprinter.digest([tensor])[0]
    width = tensor.element_size() * 8
    for element in (0, 1, 1024, 2052):
        for bit in range(width):
            corrupted = tensor.clone()
            flip_bit(corrupted, element, str(bit))
            changed = fingerprinter.digest([corrupted])[0] != clean
            assert bool(changed.all()), (dtype, element, bit)


def test_signed_zeros_and_nan_payloads_differ():
    fingerprinter = Fingerprinter()
    plus, minus = torch.zeros(8), torch.zeros(8)
    minus[3] = -0.0
    assert torch.equal(plus, minus)  # equal as values...
    assert fingerprinter.digest([plus]).tolist() != fingerprinter.digest([minus]).tolist()  # ...not as bits
    quiet = torch.full((4,), float("nan"))
    payload = quiet.clone()
    payload.view(torch.int32)[1] |= 1
    assert torch.isnan(payload).all()
    assert fingerprinter.digest([quiet]).tolist() != fingerprinter.digest([payload]).tolist()


def test_swaps_and_cancelling_errors_are_caught():
    fingerprinter = Fingerprinter()
    base = torch.randn(5000)
    clean = fingerprinter.digest([base])[0]
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        i, j = torch.randint(0, base.numel(), (2,), generator=generator).tolist()
        if base[i] == base[j]:
            continue
        swapped = base.clone()
        swapped[i], swapped[j] = base[j], base[i]
        assert (fingerprinter.digest([swapped])[0] != clean).all()
        # +δ at one position and −δ at another: a plain sum of the values (or of the bits) would not move.
        cancelled = base.view(torch.int32).clone()
        cancelled[i] += 4096
        cancelled[j] -= 4096
        assert int(cancelled.sum()) == int(base.view(torch.int32).sum())
        assert (fingerprinter.digest([cancelled.view(torch.float32)])[0] != clean).all()
    # Swapping two whole rows of 1024 words, and the same error added to every word of a row.
    rows = torch.randn(4, 1024)
    clean_rows = fingerprinter.digest([rows])[0]
    assert (fingerprinter.digest([rows[[1, 0, 2, 3]].contiguous()])[0] != clean_rows).all()
    shifted = rows.view(torch.int32).clone()
    shifted[2] += 1
    assert (fingerprinter.digest([shifted.view(torch.float32)])[0] != clean_rows).all()


def test_non_contiguous_and_offset_views_fingerprint_their_values():
    base = torch.randn(64, 48)
    view = base.t()
    assert Fingerprinter().digest([view]).tolist() == Fingerprinter().digest([view.contiguous()]).tolist()
    offset = torch.randn(4097).bfloat16()[1:]  # storage offset of 2 bytes: not 4-byte aligned
    assert Fingerprinter().digest([offset]).tolist() == [reference_digest(offset.clone())]
