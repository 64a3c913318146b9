"""Group-normalized advantages and the zero-variance group filter.

Every task is attempted G times (a group); each attempt's advantage is its reward relative to the
group's: Â_i = (R_i − mean(R)) / (std(R) + ε) (GRPO, Shao et al. 2024, "DeepSeekMath", §4.1.2), with the
population standard deviation. ``std_normalize=False`` keeps only the centring (Dr. GRPO, Liu et al.
2025, §3.1, argues the division over-weights near-uniform groups). Every token of a trajectory gets the
trajectory's advantage (outcome supervision). A group whose rewards are all equal has Â = 0 everywhere
and teaches nothing; actors drop such groups before they reach the table.
"""

from __future__ import annotations

import math

# Guards the division for groups with a tiny spread (GRPO implementations use 1e-4 to 1e-8).
STD_EPSILON = 1e-6


def group_advantages(rewards: list[float], std_normalize: bool = True) -> list[float]:
    """Advantages of one group's attempts, in the same order."""
    assert rewards, "a group has at least one attempt"
    mean = sum(rewards) / len(rewards)
    centred = [r - mean for r in rewards]
    if not std_normalize:
        return centred
    std = math.sqrt(sum(c * c for c in centred) / len(centred))
    return [c / (std + STD_EPSILON) for c in centred]


def zero_variance(rewards: list[float], tolerance: float = 1e-9) -> bool:
    """True when every attempt got (nearly) the same reward."""
    return max(rewards) - min(rewards) <= tolerance
