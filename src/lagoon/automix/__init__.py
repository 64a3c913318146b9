"""AutoMixer: choose the data mixture over leaves with proxy models, surrogates and a constrained optimizer.

    from lagoon.config import load_config
    from lagoon import automix
    summary = automix.run(load_config("configs/automix_demo.toml"), "runs/automix")   # resumable, no-op when done
    summary["mixture_file"]                                                            # [data] mixture = ...
    automix.validate(load_config("configs/automix_demo.toml"), "runs/automix")         # the larger-scale check

Modules, in pipeline order: `space` (leaves, prior, repetition caps), `sampling` (Dirichlet proxy
mixtures), `runs` (proxy and validation run configs, the worker), `backends` (process pool, Ray),
`sweep` (plan, proxies, Parquet table), `surrogate` + `crossval` (regressors and held-out scores),
`optimize` (the mixture, the interaction matrix), `fit` (that stage's files), `validation`, `report`,
`pipeline` (`run`, `validate`), `commands` (the CLI), `config` (the ``[automix]`` section).
"""

from __future__ import annotations

from typing import Any


def run(config: Any, out_dir: Any, show_progress: bool = True) -> dict[str, Any]:
    """`lagoon automix run` in Python; see `lagoon.automix.pipeline.run`."""
    from lagoon.automix.pipeline import run as run_pipeline

    return run_pipeline(config, out_dir, show_progress)


def validate(config: Any, out_dir: Any, show_progress: bool = True) -> dict[str, Any]:
    """`lagoon automix validate` in Python; see `lagoon.automix.pipeline.validate`."""
    from lagoon.automix.pipeline import validate as validate_pipeline

    return validate_pipeline(config, out_dir, show_progress)


__all__ = ["run", "validate"]
