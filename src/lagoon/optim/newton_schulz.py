"""Newton–Schulz orthogonalization: approximately the polar factor U·Vᵀ of G = U·S·Vᵀ, by matmuls only.

Each step applies the odd quintic X ← a·X + b·(X·Xᵀ)·X + c·(X·Xᵀ)²·X, which pushes every singular value of
X toward 1 while keeping the singular vectors. G is first divided by its Frobenius norm (≥ its spectral
norm) so all singular values start in (0, 1]. Two coefficient choices:

- ``quintic``: (a, b, c) = (3.4445, −4.7750, 2.0315) at every step (Jordan et al. 2024, "Muon: An
  optimizer for hidden layers in neural networks"), chosen to maximise the slope at zero; the result has
  singular values in roughly [0.7, 1.2] rather than exactly 1, which does not hurt training.
- ``polar_express``: a different minimax-optimal (a, b, c) per step (Amsel, Persson, Musco & Gower 2025,
  "The Polar Express", arXiv 2505.16932, §4 and Alg. 1), computed for 5 steps with safety factor 2·10⁻²
  and cushion 2 — the schedule nanochat and modded-nanogpt ship. It converges to exactly 1.

`newton_schulz` works on any batch of matrices [..., P, Q]: one batched matmul per step for all of them.
`newton_schulz_reference` is the one-matrix path (the same operations as ``torch.optim.Muon``) that the
batched path is tested against.

How bf16 products are computed (``matmul``). In bf16 Newton–Schulz every matrix is held in bf16 and each
product is accumulated in fp32, then rounded to bf16 (what tensor cores do). ``native`` hands bf16 tensors
to torch's bf16 GEMM. On a CPU without bf16 matrix instructions (no AVX512-BF16, no AMX) that GEMM is
ATen's generic fallback loop: on an AVX2 core it ran a 256×512·512×256 product at ~1.3 GFLOP/s against
~14 GFLOP/s for MKL's fp32 GEMM on the same bf16 values (docs/LOG.md, 2026-12-03), so there ``auto``
uses ``float32``: the same bf16 values widened exactly to fp32, an fp32 GEMM, the result rounded to bf16
— the same numbers up to where the rounding happens (results agree with ``native`` to about half of
bf16's own distance from fp32 Newton–Schulz; tests/optim/test_newton_schulz.py).

Shape legend: N matrices in a batch, P ≤ Q the short and long side (a tall matrix is transposed first so
the Gram matrix X·Xᵀ is the small P×P one).
"""

from __future__ import annotations

import torch

# Jordan et al. 2024 (and torch.optim.Muon's defaults).
QUINTIC = (3.4445, -4.7750, 2.0315)

# Amsel et al. 2025, num_iters=5, safety_factor=2e-2, cushion=2 (the published 5-step schedule).
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# Past its last step the optimal polynomial on [1 − ε, 1] is the classical quintic Newton–Schulz map
# (15/8, −10/8, 3/8) (Amsel et al. 2025, §4: the schedule's coefficients converge to it).
POLAR_EXPRESS_TAIL = (1.875, -1.25, 0.375)
# The schedule assumes σ_max ≤ 1/(1 + 2·10⁻²) after normalization (its safety factor).
POLAR_EXPRESS_SAFETY = 1.02

# Floor of the normalizing norm, so an all-zero matrix maps to zero instead of NaN (torch.optim.Muon's EPS).
EPS = 1e-7

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}

MATMULS = ("auto", "native", "float32")


def native_bf16_matmul(device: torch.device) -> bool:
    """Whether bf16 GEMMs on `device` run on bf16 hardware: always on accelerators; on CPUs only with
    AVX512-BF16 or AMX (a property of the CPU model, so every replica on such machines decides alike)."""
    if device.type != "cpu":
        return True
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_matmul(matmul: str, dtype: torch.dtype, device: torch.device) -> str:
    """``native`` or ``float32``: how the products of a `dtype` Newton–Schulz on `device` are computed."""
    if matmul not in MATMULS:
        raise ValueError(f"unknown Newton–Schulz matmul {matmul!r}; expected one of {', '.join(MATMULS)}")
    if dtype != torch.bfloat16:
        return "native"  # fp32 operands: fp32 GEMMs either way
    if matmul == "auto":
        return "native" if native_bf16_matmul(device) else "float32"
    return matmul


def coefficient_schedule(coefficients: str, steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of `steps` iterations for ``quintic`` or ``polar_express``."""
    if coefficients == "quintic":
        return [QUINTIC] * steps
    if coefficients == "polar_express":
        return [*POLAR_EXPRESS[:steps], *[POLAR_EXPRESS_TAIL] * max(0, steps - len(POLAR_EXPRESS))]
    raise ValueError(f"unknown Newton–Schulz coefficients {coefficients!r}")


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: str = "quintic",
    dtype: torch.dtype | str = torch.bfloat16,
    matmul: str = "auto",
) -> torch.Tensor:
    """Orthogonalize every matrix of G [..., P, Q] independently; returns the same shape in `dtype`.

    Leading dimensions are a batch: an expert stack [E, A, B] gives E orthogonalized [A, B] matrices,
    never mixing experts. One batched matmul per step covers the whole batch. `matmul` chooses how bf16
    products are computed (module docstring); it does not change which values are held between products.
    """
    assert G.dim() >= 2, f"Newton–Schulz needs matrices, got shape {tuple(G.shape)}"
    dtype = _resolve_dtype(dtype)
    schedule = coefficient_schedule(coefficients, steps)
    safety = POLAR_EXPRESS_SAFETY if coefficients == "polar_express" else 1.0
    batch_shape = G.shape[:-2]
    X = G.to(dtype).reshape(-1, *G.shape[-2:]) if G.dim() > 2 else G.to(dtype)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    norm = X.norm(dim=(-2, -1), keepdim=True)
    X = X / (norm * safety if safety != 1.0 else norm).clamp(min=EPS)
    # addmm/baddbmm fuse the scaled sums: B = b·A + c·A·A and X = a·X + B·X.
    combine = torch.addmm if X.dim() == 2 else torch.baddbmm
    if resolve_matmul(matmul, dtype, X.device) == "float32":
        X = _steps_in_float32(X, schedule, combine)
    else:
        for a, b, c in schedule:
            A_NPP = X @ X.mT
            B_NPP = combine(A_NPP, A_NPP, A_NPP, beta=b, alpha=c)
            X = combine(X, B_NPP, X, beta=a)
    if tall:
        X = X.mT
    return X.reshape(*batch_shape, *X.shape[-2:]) if G.dim() > 2 else X


def _steps_in_float32(X_NPQ: torch.Tensor, schedule, combine) -> torch.Tensor:
    """The bf16 iteration with fp32 GEMMs: operands are bf16 values widened exactly to fp32, and every
    product is rounded back to bf16 before it is used, so the values held between products are bf16."""
    low = X_NPQ.dtype
    X_NPQ = X_NPQ.float()
    for a, b, c in schedule:
        A_NPP = (X_NPQ @ X_NPQ.mT).to(low).float()
        B_NPP = combine(A_NPP, A_NPP, A_NPP, beta=b, alpha=c).to(low).float()
        X_NPQ = combine(X_NPQ, B_NPP, X_NPQ, beta=a).to(low).float()
    return X_NPQ.to(low)


def newton_schulz_reference(
    G_PQ: torch.Tensor,
    steps: int = 5,
    coefficients: str = "quintic",
    dtype: torch.dtype | str = torch.bfloat16,
) -> torch.Tensor:
    """One matrix at a time, written out step by step (the operations of ``torch.optim.Muon``)."""
    assert G_PQ.dim() == 2
    dtype = _resolve_dtype(dtype)
    X = G_PQ.to(dtype)
    tall = G_PQ.shape[0] > G_PQ.shape[1]
    if tall:
        X = X.T
    safety = POLAR_EXPRESS_SAFETY if coefficients == "polar_express" else 1.0
    X = X / (X.norm() * safety).clamp(min=EPS) if safety != 1.0 else X / X.norm().clamp(min=EPS)
    for a, b, c in coefficient_schedule(coefficients, steps):
        gram = X @ X.T
        gram_update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        X = torch.addmm(X, gram_update, X, beta=a)
    return X.T if tall else X


def newton_schulz_flops(rows: int, cols: int, steps: int = 5) -> int:
    """Multiply-add FLOPs (2 per MAC) of `steps` iterations on one rows×cols matrix.

    With P ≤ Q: X·Xᵀ costs 2P²Q, A·A costs 2P³, B·X costs 2P²Q, so a step is 4P²Q + 2P³ ≈ the P²Q
    scaling that distributed Muon balances owners by.
    """
    P, Q = min(rows, cols), max(rows, cols)
    return steps * (4 * P * P * Q + 2 * P**3)
