"""Mixtures: weights over leaves that say what share of training tokens each leaf supplies.

File format (``Mixture.save`` / ``Mixture.load``; training and the AutoMixer both read and write it),
TOML or JSON by suffix, the leaf names quoted::

    # lagoon mixture
    [weights]
    "code/q1" = 0.25
    "code/q2" = 0.15
    ...

    {"weights": {"code/q1": 0.25, "code/q2": 0.15, ...}}

Optional top-level ``name`` and ``note`` strings are kept. Leaves that are absent have weight 0.
`Mixture.validate(shards)` refuses, with one-line `ConfigError`s: negative or non-finite weights, weights
that do not sum to 1 within 1e-6, leaves the shard set does not have, and positive weights on empty
leaves. `expected_epochs` says how many times a token budget reads each leaf (for repetition caps).
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lagoon.configio import dumps_toml
from lagoon.errors import ConfigError, LagoonError

SUM_TOLERANCE = 1e-6


class Mixture:
    """Weights over leaves (`weights`: leaf → share of training tokens)."""

    def __init__(self, weights: Mapping[str, float], name: str = "", note: str = ""):
        self.weights = {str(leaf): float(weight) for leaf, weight in weights.items()}
        self.name = name
        self.note = note

    def __repr__(self) -> str:
        shown = ", ".join(f"{leaf}: {weight:.4f}" for leaf, weight in self.weights.items() if weight)
        return f"Mixture({shown})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mixture) and self.weights == other.weights

    def weight(self, leaf: str) -> float:
        return self.weights.get(leaf, 0.0)

    # -------------------------------------------------------------------------------------- constructors
    @classmethod
    def uniform(cls, leaves: list[str]) -> "Mixture":
        return cls({leaf: 1.0 / len(leaves) for leaf in leaves}, name="uniform")

    def normalized(self) -> "Mixture":
        """The same proportions, summing to 1 (negative weights are an error)."""
        total = sum(self.weights.values())
        if total <= 0 or any(w < 0 for w in self.weights.values()):
            raise ConfigError("mixture", "cannot normalise weights that are negative or sum to 0")
        return Mixture({leaf: w / total for leaf, w in self.weights.items()}, self.name, self.note)

    # -------------------------------------------------------------------------------------- checks
    def validate(self, shards=None, field: str = "mixture") -> "Mixture":
        """Check the weights (and, given a `ShardSet`, the leaves); returns self."""
        if not self.weights:
            raise ConfigError(field, "has no weights")
        for leaf, weight in self.weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ConfigError(f"{field}.{leaf}", f"weight must be a finite number >= 0, got {weight}")
        total = sum(self.weights.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise ConfigError(field, f"weights sum to {total:.8g}, not 1 (within {SUM_TOLERANCE:g})")
        if shards is not None:
            known = shards.leaf_tokens
            unknown = sorted(set(self.weights) - set(known))
            if unknown:
                raise ConfigError(f"{field}.{unknown[0]}", f"unknown leaf; the shard set has {', '.join(known)}")
            empty = sorted(leaf for leaf, weight in self.weights.items() if weight > 0 and known[leaf] == 0)
            if empty:
                raise ConfigError(f"{field}.{empty[0]}", "has a positive weight but no tokens")
        return self

    def expected_epochs(self, shards_or_tokens, token_budget: float) -> dict[str, float]:
        """Epochs of each leaf that `token_budget` training tokens read under this mixture.

        `shards_or_tokens` is a `ShardSet` or a dict leaf → tokens. Leaves with weight 0 read 0 epochs.
        """
        leaf_tokens = getattr(shards_or_tokens, "leaf_tokens", shards_or_tokens)
        epochs = {}
        for leaf, tokens in leaf_tokens.items():
            weight = self.weight(leaf)
            epochs[leaf] = 0.0 if weight == 0 else (math.inf if tokens == 0 else token_budget * weight / tokens)
        return epochs

    def check_repetition(self, shards_or_tokens, token_budget: float, repetition_cap: float) -> None:
        """Raise a one-line error if `token_budget` would read some leaf more than `repetition_cap` times."""
        over = {leaf: e for leaf, e in self.expected_epochs(shards_or_tokens, token_budget).items() if e > repetition_cap}
        if over:
            leaf = max(over, key=over.get)
            raise LagoonError(f"{token_budget:,.0f} tokens would read leaf {leaf} {over[leaf]:.2f} times, over the "
                              f"repetition cap of {repetition_cap:g} ({len(over)} leaves over); lower its weight, "
                              "train for fewer tokens or raise data.repetition_cap")

    # -------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.name:
            data["name"] = self.name
        if self.note:
            data["note"] = self.note
        data["weights"] = dict(self.weights)
        return data

    def save(self, path: str | Path) -> Path:
        """Write TOML (or JSON when the name ends in .json), atomically."""
        import os

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=1) + "\n"
        else:
            text = "# lagoon mixture: share of training tokens per leaf (domain/quality bucket)\n" + dumps_toml(self.to_dict())
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Mixture":
        path = Path(path)
        if not path.is_file():
            raise ConfigError("mixture", f"mixture file {path} does not exist")
        try:
            data = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError("mixture", f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {error}") from None
        weights = data.get("weights")
        if not isinstance(weights, dict) or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                    for w in weights.values()):
            raise ConfigError("mixture", f"{path} needs a [weights] table of leaf = number")
        return cls(weights, name=str(data.get("name", "")), note=str(data.get("note", "")))


def resolve_mixture(data_config, shards) -> Mixture:
    """The mixture a `[data]` config asks for: its file, its inline weights, or the natural mixture."""
    if data_config.mixture:
        mixture = Mixture.load(data_config.mixture)
    elif data_config.weights:
        mixture = Mixture(data_config.weights)
    else:
        mixture = shards.natural_mixture()
    return mixture.validate(shards, field="data.mixture" if data_config.mixture else "data.weights")
