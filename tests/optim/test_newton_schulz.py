"""Newton–Schulz: the batched path equals one matrix at a time, per expert, for both schedules."""

from __future__ import annotations

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from lagoon.optim import OptimConfig
from lagoon.optim.grouping import MatrixParam
from lagoon.optim.newton_schulz import (
    POLAR_EXPRESS, POLAR_EXPRESS_TAIL, QUINTIC, coefficient_schedule, newton_schulz, newton_schulz_flops,
    newton_schulz_reference, resolve_matmul,
)
from lagoon.optim.optimizer import orthogonalize_grouped


@pytest.mark.parametrize("coefficients", ["quintic", "polar_express"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rows, cols", [(24, 40), (40, 24), (32, 32)])
def test_batched_equals_one_at_a_time(coefficients, dtype, rows, cols):
    G_NRC = torch.randn(5, rows, cols)
    batched = newton_schulz(G_NRC, 5, coefficients, dtype, matmul="native")
    for i in range(5):
        single = newton_schulz_reference(G_NRC[i], 5, coefficients, dtype)
        torch.testing.assert_close(batched[i].float(), single.float(), rtol=0, atol=1e-6 if dtype == "float32" else 0)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("coefficients", ["quintic", "polar_express"])
@pytest.mark.parametrize("rows, cols", [(48, 96), (96, 48)])
def test_float32_products_agree_with_native_bf16(coefficients, rows, cols):
    """The fp32-GEMM path of bf16 Newton–Schulz (the fast one on CPUs without bf16 units) holds bf16 values
    and differs from native bf16 GEMMs by less than bf16 itself differs from fp32 Newton–Schulz; batched
    and one matrix at a time it agrees bit for bit."""
    G_NRC = torch.randn(4, rows, cols)
    fast = newton_schulz(G_NRC, 5, coefficients, "bfloat16", matmul="float32")
    native = newton_schulz(G_NRC, 5, coefficients, "bfloat16", matmul="native")
    exact = newton_schulz(G_NRC, 5, coefficients, "float32")
    assert fast.dtype == torch.bfloat16 and fast.shape == G_NRC.shape
    for i in range(4):
        assert torch.equal(fast[i], newton_schulz(G_NRC[i], 5, coefficients, "bfloat16", matmul="float32"))
        assert _relative(fast[i], native[i]) < _relative(native[i], exact[i])
        assert _relative(fast[i], exact[i]) < 0.05


def test_matmul_choice():
    cpu = torch.device("cpu")
    assert resolve_matmul("auto", torch.float32, cpu) == "native"       # fp32 operands: nothing to choose
    assert resolve_matmul("native", torch.bfloat16, cpu) == "native"
    assert resolve_matmul("float32", torch.bfloat16, cpu) == "float32"
    assert resolve_matmul("auto", torch.bfloat16, torch.device("meta")) == "native"  # accelerators: native
    has_bf16_units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_matmul("auto", torch.bfloat16, cpu) == ("native" if has_bf16_units else "float32")
    with pytest.raises(ValueError, match="matmul"):
        resolve_matmul("tf32", torch.bfloat16, cpu)


@pytest.mark.parametrize("ns_matmul", ["native", "float32"])
def test_grouping_transposes_equals_per_matrix(ns_matmul):
    """R×C and C×R matrices share one batched call (the tall ones transposed); each result equals
    orthogonalizing that matrix alone, bit for bit, in its own orientation."""
    config = OptimConfig(ns_dtype="bfloat16", ns_matmul=ns_matmul)
    shapes = [(16, 40, 1), (40, 16, 1), (16, 40, 3), (24, 24, 1), (40, 16, 2)]
    directions = [(MatrixParam(f"m{i}", None, count, rows, cols), torch.randn(count, rows, cols).squeeze(0))
                  for i, (rows, cols, count) in enumerate(shapes)]  # type: ignore[arg-type]
    for (matrix, direction), result in zip(directions, orthogonalize_grouped(directions, config)):
        alone = newton_schulz(direction.reshape(matrix.count, matrix.rows, matrix.cols), 5, "quintic", "bfloat16",
                              ns_matmul)
        assert result.shape == (matrix.count, matrix.rows, matrix.cols)
        assert torch.equal(result, alone), matrix.name


def test_reference_is_torch_muon():
    for shape in [(24, 40), (40, 24)]:
        G = torch.randn(*shape)
        assert torch.equal(newton_schulz_reference(G, 5, "quintic", "bfloat16"),
                           _zeropower_via_newtonschulz(G, QUINTIC, 5, 1e-7))


def test_expert_stack_is_orthogonalized_per_expert():
    """[E, A, B]: each expert's result depends on that expert alone, never on the others."""
    G_EAB = torch.randn(4, 16, 24)
    alone = newton_schulz(G_EAB[2:3], dtype="float32")[0]
    G_EAB[0] *= 100.0  # a huge neighbour must not change expert 2's update
    together = newton_schulz(G_EAB, dtype="float32")[2]
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    # 4-D leading shapes flatten and come back.
    assert newton_schulz(torch.randn(2, 3, 8, 12)).shape == (2, 3, 8, 12)


@pytest.mark.parametrize("coefficients, low, high", [("quintic", 0.6, 1.25), ("polar_express", 0.8, 1.2)])
def test_singular_values_pushed_toward_one(coefficients, low, high):
    U, _, Vh = torch.linalg.svd(torch.randn(32, 48), full_matrices=False)
    spread = torch.logspace(0, -2, 32)  # condition number 100
    G = U @ torch.diag(spread) @ Vh
    S = torch.linalg.svdvals(newton_schulz(G, 5, coefficients, "float32"))
    assert low < S.min() and S.max() < high, (S.min(), S.max())
    # The singular vectors are kept: the result is close to U·Vᵀ.
    assert torch.nn.functional.cosine_similarity(newton_schulz(G, 5, coefficients, "float32").flatten(),
                                                 (U @ Vh).flatten(), dim=0) > 0.98


def test_zero_matrix_stays_zero_and_dtype():
    out = newton_schulz(torch.zeros(2, 8, 8))
    assert out.dtype == torch.bfloat16 and torch.count_nonzero(out) == 0


def test_schedules():
    assert coefficient_schedule("quintic", 3) == [QUINTIC] * 3
    assert coefficient_schedule("polar_express", 3) == list(POLAR_EXPRESS[:3])
    assert coefficient_schedule("polar_express", 7)[5:] == [POLAR_EXPRESS_TAIL] * 2
    with pytest.raises(ValueError):
        coefficient_schedule("cubic", 5)
    assert newton_schulz_flops(4, 8, 1) == newton_schulz_flops(8, 4, 1) == 4 * 16 * 8 + 2 * 64
