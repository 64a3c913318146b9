"""The ``[optim]`` config section: Muon for matrices, AdamW for the rest, and distributed Muon.

Defaults suit the `tiny` model on a CPU; every constant names its source. With
``muon_scaling = "match_rms_adamw"`` (the default) Muon's update has the RMS of a typical AdamW update
(0.2, Liu et al. 2025, "Muon is Scalable for LLM Training", §2.2), so `lr` and `adamw_lr` can share one
value and a learning rate tuned for AdamW transfers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lagoon.errors import check


@dataclass
class OptimConfig:
    """How parameters are updated: Muon (or plain AdamW) and how the work is spread over ranks."""

    name: Literal["muon", "adamw"] = "muon"
    """``muon``: Muon for hidden matrices and AdamW for embeddings, head, norms, router; ``adamw``: AdamW
    for everything (the baseline Muon is compared against)."""

    lr: float = 3e-3
    """Peak learning rate of the Muon group (matrices). With ``match_rms_adamw`` scaling this is on the
    AdamW scale (Moonlight used the same peak LR for both, Liu et al. 2025 §3.1); with ``spectral``
    scaling Muon's own scale applies (≈0.02 in Jordan et al. 2024's Muon)."""

    adamw_lr: float = 3e-3
    """Peak learning rate of the AdamW group; also of every parameter when ``name = "adamw"``."""

    weight_decay: float = 0.1
    """Decoupled weight decay λ: θ ← θ·(1 − η_t·λ), where η_t is the group's scheduled learning rate
    *before* Muon's per-matrix update scaling (Liu et al. 2025 §2.1, eq. 3; 0.1 as in Moonlight).
    Applied to matrices (Muon and AdamW); never to norms' gains or biases."""

    adamw_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW's (β1, β2); (0.9, 0.95) is the usual LLM pretraining choice (Moonlight, DeepSeek-V3 §4.2)."""

    adamw_eps: float = 1e-8
    """AdamW's ε (Loshchilov & Hutter 2019)."""

    momentum: float = 0.95
    """Muon's momentum μ in the EMA form m ← μ·m + (1 − μ)·g (Jordan et al. 2024; torch.optim.Muon)."""

    nesterov: bool = True
    """Orthogonalize the Nesterov look-ahead (1 − μ)·g + μ·m instead of m (Jordan et al. 2024)."""

    ns_steps: int = 5
    """Newton–Schulz iterations (5 in Jordan et al. 2024, Moonlight and the Polar Express schedule)."""

    ns_coefficients: Literal["quintic", "polar_express"] = "quintic"
    """``quintic``: the fixed (3.4445, −4.7750, 2.0315) of Jordan et al. 2024; ``polar_express``: the
    per-step minimax schedule of Amsel et al. 2025 ("The Polar Express", arXiv 2505.16932, §4)."""

    ns_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Precision of the Newton–Schulz matmuls; bf16 is what Muon was designed for (Jordan et al. 2024)."""

    ns_matmul: Literal["auto", "native", "float32"] = "auto"
    """How bf16 Newton–Schulz products are computed (`lagoon.optim.newton_schulz`): ``native`` bf16 GEMMs,
    or ``float32`` GEMMs on the same bf16 values with each product rounded back to bf16; ``auto`` picks
    ``float32`` on CPUs without bf16 matrix instructions (no AVX512-BF16 or AMX), where it is ~10× faster,
    and ``native`` everywhere else. Ignored for ``ns_dtype = "float32"``."""

    muon_scaling: Literal["match_rms_adamw", "spectral"] = "match_rms_adamw"
    """Per-matrix update scale for an A×B matrix: ``match_rms_adamw`` = 0.2·√max(A, B) (Liu et al. 2025
    §2.2), ``spectral`` = √(fan_out / fan_in) (Bernstein & Newhouse 2024, "Modular Duality"; Yang et al.
    2023, "A Spectral Condition for Feature Learning")."""

    router: Literal["adamw", "muon"] = "adamw"
    """Optimizer of the MoE router matrix ``mlp.gate.weight`` [E, D]. AdamW by default; see
    docs/distributed_muon.md ("Which parameters Muon gets") for the reasons and the evidence."""

    split_gate_up: bool = True
    """Orthogonalize each expert's fused ``gate_up_proj`` [2F, D] as two [F, D] matrices (gate, up), the
    same as the dense SwiGLU's separate ``gate_proj``/``up_proj``; false treats [2F, D] as one matrix."""

    distributed: Literal["none", "ddp", "fsdp2"] = "none"
    """``none``: every rank runs the whole optimizer (the model is wrapped in DDP by the trainer);
    ``ddp``: distributed Muon over replicated parameters (gradients reduced to owner ranks, updates
    all-gathered, ZeRO-1 AdamW); ``fsdp2``: distributed Muon over ``fully_shard`` parameters. With
    ``name = "adamw"``, ``ddp`` is ZeRO-1 AdamW and ``fsdp2`` AdamW on each rank's shards."""

    bucket_mb: float = 4.0
    """*distributed*: target size of one communication bucket in MiB (fp32 elements × 4 bytes)."""

    def validate(self) -> None:
        check(self.lr >= 0, "lr", f"must be >= 0, got {self.lr}")
        check(self.adamw_lr >= 0, "adamw_lr", f"must be >= 0, got {self.adamw_lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(len(self.adamw_betas) == 2 and all(0 <= b < 1 for b in self.adamw_betas), "adamw_betas",
              f"must be two numbers in [0, 1), got {self.adamw_betas}")
        check(self.adamw_eps > 0, "adamw_eps", f"must be positive, got {self.adamw_eps}")
        check(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        check(1 <= self.ns_steps <= 20, "ns_steps", f"must be between 1 and 20, got {self.ns_steps}")
        check(self.bucket_mb > 0, "bucket_mb", f"must be positive, got {self.bucket_mb}")
