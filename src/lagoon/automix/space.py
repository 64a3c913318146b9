"""The space AutoMixer searches: mixtures over leaves, the natural prior, and the repetition caps.

A *leaf* is one shard of the corpus (domain × quality bucket). A mixture is a point on the simplex over
leaves. The prior is the natural token share after dedup: leaf tokens over all tokens.

Repetition is measured against the target run: a leaf with weight w and N tokens is seen
``w · target_tokens / N`` times (epochs) by a run of `target_tokens`. A proxy with a smaller budget B sees
only the first ``N · B / target_tokens`` tokens of each leaf, so it repeats every leaf exactly as often as
the target run would; the cap ``epochs ≤ max_epochs`` then becomes the per-leaf upper bound
``w ≤ max_epochs · N / target_tokens``.

Shape legend: K leaves, N mixtures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lagoon.errors import ConfigError

# Weights this close to a bound count as on it (the optimizer works in float64 and rounds on write).
BOUND_TOLERANCE = 1e-6


@dataclass(frozen=True)
class MixtureSpace:
    """Leaves, their token counts, and the repetition budget of the run the mixture is for."""

    leaves: tuple[str, ...]
    leaf_tokens: tuple[int, ...]
    target_tokens: int
    """Tokens of the run the mixture is chosen for; repetition is measured at this budget."""
    max_epochs: float
    """No leaf may be seen more than this many times by the target run."""

    def __post_init__(self) -> None:
        assert len(self.leaves) == len(self.leaf_tokens) and len(self.leaves) > 0
        if any(n <= 0 for n in self.leaf_tokens):
            empty = [leaf for leaf, n in zip(self.leaves, self.leaf_tokens) if n <= 0]
            raise ConfigError("automix", f"leaf {empty[0]!r} has no tokens; rebuild the shard set or drop the leaf")
        if self.target_tokens <= 0:
            raise ConfigError("automix.target_tokens", f"must be positive, got {self.target_tokens}")
        if self.max_epochs <= 0:
            raise ConfigError("automix.max_epochs", f"must be positive, got {self.max_epochs}")
        if self.caps.sum() < 1 - BOUND_TOLERANCE:
            raise ConfigError(
                "automix.max_epochs",
                f"a run of {self.target_tokens:,} tokens must repeat the {sum(self.leaf_tokens):,}-token corpus "
                f"{self.target_tokens / sum(self.leaf_tokens):.2f} times, above the cap of {self.max_epochs:g} epochs; "
                "raise max_epochs or lower the target token budget")

    @property
    def size(self) -> int:
        return len(self.leaves)

    @property
    def prior(self) -> np.ndarray:
        """[K] the natural mixture: each leaf's share of all tokens."""
        tokens_K = np.asarray(self.leaf_tokens, dtype=np.float64)
        return tokens_K / tokens_K.sum()

    @property
    def uniform(self) -> np.ndarray:
        """[K] equal weight on every leaf, projected onto the caps if it violates them."""
        return project_to_caps(np.full(self.size, 1.0 / self.size), self.caps)

    @property
    def caps(self) -> np.ndarray:
        """[K] the largest weight each leaf may take without exceeding `max_epochs` in the target run."""
        tokens_K = np.asarray(self.leaf_tokens, dtype=np.float64)
        return np.minimum(1.0, self.max_epochs * tokens_K / self.target_tokens)

    def epochs(self, weights_NK: np.ndarray) -> np.ndarray:
        """[..., K] how many times the target run (and a matched proxy) sees each leaf."""
        tokens_K = np.asarray(self.leaf_tokens, dtype=np.float64)
        return np.asarray(weights_NK) * self.target_tokens / tokens_K

    def feasible(self, weights_NK: np.ndarray) -> np.ndarray:
        """[...] whether each mixture is on the simplex and within every leaf's cap."""
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        on_simplex = (weights_NK >= -BOUND_TOLERANCE).all(-1) & (np.abs(weights_NK.sum(-1) - 1) <= BOUND_TOLERANCE)
        within_caps = (weights_NK <= self.caps + BOUND_TOLERANCE).all(-1)
        return on_simplex & within_caps

    def as_dict(self, weights_K: np.ndarray) -> dict[str, float]:
        return {leaf: float(w) for leaf, w in zip(self.leaves, weights_K)}

    def from_dict(self, weights: dict[str, float]) -> np.ndarray:
        return np.array([float(weights.get(leaf, 0.0)) for leaf in self.leaves])


def project_to_caps(weights_K: np.ndarray, caps_K: np.ndarray) -> np.ndarray:
    """The Euclidean projection of `weights_K` onto {w : Σw = 1, 0 ≤ w ≤ caps}.

    The projection is ``clip(v − τ, 0, caps)`` for the τ that makes it sum to one; Σ is monotone in τ, so
    bisection finds it (Wang & Carreira-Perpiñán 2013, "Projection onto the probability simplex", with
    box upper bounds added).
    """
    weights_K = np.asarray(weights_K, dtype=np.float64)
    caps_K = np.asarray(caps_K, dtype=np.float64)
    assert caps_K.sum() >= 1 - BOUND_TOLERANCE, "caps leave no feasible mixture"
    low, high = weights_K.min() - caps_K.max() - 1.0, weights_K.max()
    for _ in range(200):
        tau = 0.5 * (low + high)
        total = np.clip(weights_K - tau, 0.0, caps_K).sum()
        if total > 1:
            low = tau
        else:
            high = tau
    projected_K = np.clip(weights_K - 0.5 * (low + high), 0.0, caps_K)
    return projected_K / projected_K.sum()


def kl_divergence(weights_NK: np.ndarray, prior_K: np.ndarray) -> np.ndarray:
    """[N] KL(w ‖ prior) in nats, with 0·log 0 = 0."""
    weights_NK = np.asarray(weights_NK, dtype=np.float64)
    ratio = np.where(weights_NK > 0, weights_NK / prior_K, 1.0)
    return (weights_NK * np.log(ratio)).sum(-1)
