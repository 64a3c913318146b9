"""The ``[automix]`` config section: the proxy sweep, the surrogates, the optimizer and the validation.

    [automix]
    num_proxies = 56              # proxy models, one per sampled mixture
    noise_seeds = 4               # + proxies at the natural mix with other seeds: the sweep's noise
    max_epochs = 4.0              # repetition cap: no leaf is seen more often by the target run
    target_tokens = 0             # token budget repetition is matched to (0: the validation run's)
    concentration = [0.1, 5.0]    # Dirichlet concentration per leaf, drawn log-uniformly (RegMix)
    objective = {code = 1.0, math = 1.0, stem = 1.0, general = 1.0}
    backend = "process"           # or "ray"
    workers = 2
    gpus_per_run = -1             # auto: 1 per run where runs train on CUDA (Ray num_gpus; pool: cuda:i per worker)

    [automix.proxy]               # overrides of [model], [train], [optim] for the proxies
    model = {preset = "tiny", hidden_size = 64, num_hidden_layers = 2}
    train = {steps = 300}

    [automix.surrogate]           # kind, folds (outer) / inner_folds, the candidate forms, bootstrap = 32
    [automix.optimizer]           # method = "slsqp" | "topk", kl_strength, uncertainty_weight = 1.0
    [automix.validation]          # scale = 4.0 (parameters), token_scale, seeds = [0, 1, 2]

The proxies and validation runs are ordinary `lagoon train` runs: each takes the run's ``[model]``,
``[train]``, ``[optim]`` and ``[data]`` sections with the overrides above applied, so a wrong override
fails with the dotted field name (``automix.proxy.train.steps: ...``) before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lagoon.errors import check


@dataclass
class ProxyConfig:
    """How each proxy model is built and trained (overrides of the run's own sections)."""

    model: dict[str, Any] = field(default_factory=dict)
    """A complete ``[model]`` table for the proxies (e.g. ``{preset = "tiny", hidden_size = 64}``); empty:
    the run's ``[model]``."""
    train: dict[str, Any] = field(default_factory=dict)
    """Keys of ``[train]`` to override for the proxies (``steps`` sets the proxy token budget)."""
    optim: dict[str, Any] = field(default_factory=dict)
    """Keys of ``[optim]`` to override for the proxies."""
    data: dict[str, Any] = field(default_factory=dict)
    """Keys of ``[data]`` to override for the proxies (``seq_len``, ``global_batch_size``)."""


@dataclass
class SurrogateConfig:
    """The per-group regressors from mixture to loss, the choice of their form, and their uncertainty."""

    kind: Literal["auto", "loglinear", "additive", "linear", "lightgbm"] = "auto"
    """loglinear: y = exp(c) + exp(tᵀw + sᵀu) with optional log-share features u (Data Mixing Laws / Olmix,
    BiMix); additive: y = βᵀw + Σ_d k_d (S_d + ε)^(−α_d), a power law per domain of the group's held-out set;
    linear: y = βᵀw; lightgbm: boosted trees (RegMix); auto: the loglinear and additive candidates together,
    the choice made per group like every other hyper-parameter."""
    folds: int = 5
    """K of the outer K-fold cross-validation that scores each group's surrogate on held-out proxies."""
    inner_folds: int = 4
    """K of the inner cross-validation that, inside every outer fold and then on all proxies, chooses each
    group's form among the candidates below (nested cross-validation)."""
    ridge: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    """Candidate strengths λ of the shrinkage of the leaf coefficients (log-linear and linear kinds)."""
    shrink: list[Literal["domain", "leaf"]] = field(default_factory=lambda: ["domain", "leaf"])
    """Candidate shrinkage targets: each leaf's coefficient toward its domain's mean (buckets of a domain act
    alike), or toward the mean of all leaves (quality buckets may differ: leaf-level effects)."""
    log_features: list[Literal["none", "leaf", "domain"]] = field(default_factory=lambda: ["none", "leaf", "domain"])
    """Candidate log-share features of the log-linear kind: none (the Data Mixing Laws form), log of each
    leaf's share, or log of each domain's share (a power law in a share, BiMix)."""
    log_offsets: list[float] = field(default_factory=lambda: [0.003, 0.03])
    """Candidate ε of log(share + ε) (loglinear) and of (share + ε)^(−α) (additive)."""
    power_domains: list[Literal["own", "all"]] = field(default_factory=lambda: ["own"])
    """Candidate domains of the additive kind's power laws: those of the group's held-out set, or all."""
    bootstrap: int = 32
    """Bootstrap refits of every group's chosen form; their spread is the uncertainty the optimizer avoids
    (0: no ensemble, the optimizer trusts the point fit)."""
    lightgbm_estimators: int = 400
    """Boosting rounds (lightgbm)."""
    lightgbm_learning_rate: float = 0.03
    """Shrinkage per round (lightgbm)."""
    lightgbm_num_leaves: int = 8
    """Leaves per tree (lightgbm)."""
    lightgbm_min_child_samples: int = 4
    """Fewest proxies in a tree leaf (lightgbm; the library's default of 20 is for large data)."""

    def validate(self) -> None:
        check(self.folds >= 2, "folds", f"must be at least 2, got {self.folds}")
        check(self.inner_folds >= 2, "inner_folds", f"must be at least 2, got {self.inner_folds}")
        check(len(self.ridge) >= 1 and all(r >= 0 for r in self.ridge), "ridge",
              f"must list at least one value >= 0, got {self.ridge}")
        check(len(self.shrink) >= 1, "shrink", "must list at least one of \"domain\", \"leaf\"")
        check(len(self.log_features) >= 1, "log_features", "must list at least one of \"none\", \"leaf\", \"domain\"")
        check(len(self.log_offsets) >= 1 and all(0 < e < 1 for e in self.log_offsets), "log_offsets",
              f"must list at least one value in (0, 1), got {self.log_offsets}")
        check(len(self.power_domains) >= 1, "power_domains", "must list at least one of \"own\", \"all\"")
        check(self.bootstrap == 0 or self.bootstrap >= 2, "bootstrap", f"must be 0 or at least 2, got {self.bootstrap}")
        check(self.lightgbm_estimators >= 1, "lightgbm_estimators", "must be positive")
        check(self.lightgbm_learning_rate > 0, "lightgbm_learning_rate", "must be positive")
        check(self.lightgbm_num_leaves >= 2, "lightgbm_num_leaves", "must be at least 2")
        check(self.lightgbm_min_child_samples >= 1, "lightgbm_min_child_samples", "must be positive")


@dataclass
class OptimizerConfig:
    """How the mixture is chosen from the surrogates."""

    method: Literal["auto", "slsqp", "topk"] = "auto"
    """slsqp: gradient-based constrained minimisation (differentiable surrogates); topk: average the
    best `top_k` of `candidates` sampled mixtures (any surrogate, RegMix); auto: slsqp unless lightgbm."""
    kl_strength: float = 0.1
    """β of the β·KL(w ‖ prior) pull toward the natural mixture, in standard deviations of the objective
    over the sweep's proxies per nat (so it does not depend on the objective's units or weights)."""
    kl_quantile: float | None = 0.5
    """Trust region: the optimized mix's KL to the prior may not exceed this quantile of the proxies' KLs
    (0.5: no further from the natural mix than half the proxies were); none: no bound."""
    uncertainty_weight: float = 1.0
    """κ: the optimizer minimises, over the reference mixes, the worst predicted change of the objective plus
    κ standard deviations of its bootstrap spread (a pessimistic bound), so it moves weight only where the
    surrogates agree that moving it beats every reference; 0: the point prediction alone."""
    references: list[Literal["natural", "uniform"]] = field(default_factory=lambda: ["natural", "uniform"])
    """Mixes the optimized one must beat with confidence (the ones `lagoon automix validate` compares)."""
    candidates: int = 20000
    """Feasible mixtures sampled for topk (and to seed slsqp's starting points)."""
    top_k: int = 100
    """Best candidates averaged by topk."""

    def validate(self) -> None:
        check(self.kl_strength >= 0, "kl_strength", f"must be >= 0, got {self.kl_strength}")
        check(len(self.references) >= 1, "references", "must name at least one of \"natural\", \"uniform\"")
        check(self.uncertainty_weight >= 0, "uncertainty_weight", f"must be >= 0, got {self.uncertainty_weight}")
        check(self.kl_quantile is None or 0 < self.kl_quantile <= 1, "kl_quantile",
              f"must be in (0, 1] (or left out for no bound), got {self.kl_quantile}")
        check(self.candidates >= 10, "candidates", "must be at least 10")
        check(1 <= self.top_k <= self.candidates, "top_k", f"must be between 1 and candidates ({self.candidates})")


@dataclass
class ValidationConfig:
    """`lagoon automix validate`: the optimized, natural and uniform mixes trained at a larger scale."""

    scale: float = 4.0
    """Parameters of the validation model over the proxy's; its width is chosen to match (ignored when
    `model` is given)."""
    model: dict[str, Any] = field(default_factory=dict)
    """A complete ``[model]`` table for the validation model, instead of scaling the proxy's."""
    token_scale: float = 2.0
    """Training tokens of a validation run over a proxy's (more steps, same batch shape)."""
    train: dict[str, Any] = field(default_factory=dict)
    """Further ``[train]`` overrides for the validation runs (applied after `token_scale`)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds; every mix is trained once per seed."""
    proxy_scale_check: bool = True
    """Also train each compared mix at proxy scale (one seed each), to show predicted vs actual where the
    surrogate was fit."""

    def validate(self) -> None:
        check(self.scale >= 1, "scale", f"must be at least 1 (a larger model than the proxies), got {self.scale}")
        check(self.token_scale > 0, "token_scale", f"must be positive, got {self.token_scale}")
        check(len(self.seeds) >= 1, "seeds", "must list at least one seed")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")


@dataclass
class AutomixConfig:
    """The AutoMixer: proxy sweep → surrogates → optimized mixture → validation."""

    num_proxies: int = 60
    """Proxy models trained, one per sampled mixture (the natural mixture is one of them when
    `include_natural`)."""
    seed: int = 0
    """Seeds the mixture sampling, the cross-validation folds and the optimizer's candidates."""
    include_natural: bool = True
    """Make proxy 0 the natural mixture, so the surrogate is anchored at the prior it is pulled toward."""
    concentration: list[float] = field(default_factory=lambda: [0.1, 5.0])
    """[low, high]: each mixture's Dirichlet concentration per leaf is drawn log-uniformly from this
    range (RegMix: 0.1 to 5); low gives sparse mixtures, high mixtures close to the prior."""
    prior_temperature: float = 0.5
    """The Dirichlet's mean is prior^temperature, renormalised (RegMix uses 0.5 to flatten skewed priors)."""
    min_weight: float = 0.001
    """Sampled weights below this are zeroed (a leaf with a handful of tokens in a proxy tells nothing)."""
    max_epochs: float = 4.0
    """Repetition cap: no leaf may be seen more than this many times by the target run, and so by the
    proxies, whose repetition is matched to it (Muennighoff et al. 2023: up to ~4 epochs cost little)."""
    target_tokens: int = 0
    """Token budget of the run the mixture is for; repetition caps and the proxies' per-leaf data are
    measured against it. 0: the validation run's token budget."""
    objective: dict[str, float] = field(default_factory=dict)
    """Weight of each capability group's bits per byte in the objective; empty: every group, weight 1."""
    noise_seeds: int = 0
    """Extra proxies trained at the natural mixture with other seeds (train and data seed s = 1 … n): the
    seed-to-seed noise of every group's loss, set beside the spread across the sweep's mixtures (the
    sweep's signal-to-noise) in the report. They count toward the sweep's compute."""
    backend: Literal["process", "ray"] = "process"
    """Where proxies train: a local process pool, or Ray tasks (a local instance, or `ray_address`)."""
    workers: int = 2
    """Proxies trained at once (processes, or Ray tasks in flight)."""
    threads_per_worker: int = 1
    """torch threads per proxy (Ray reserves this many CPUs per task)."""
    ray_address: str = ""
    """Ray cluster to join (e.g. "auto" or "ray://head:10001"); empty starts a local Ray instance. On a
    cluster, the output directory and the shard set must be on storage every node can read."""
    gpus_per_run: float = -1.0
    """GPUs each proxy or validation run asks for. Ray reserves this many per task (its ``num_gpus``; a
    fraction packs several small runs onto one GPU) and shows the task only the GPUs it was given; the
    process pool gives each worker one GPU, round robin over `cuda_devices`. -1 (auto): 1 when the runs train
    on CUDA (``train.device`` "cuda", or "auto" with a GPU on the driver or in the Ray cluster), else 0."""
    cuda_devices: list[str] | None = None
    """GPUs the process pool spreads its workers over (ids as ``CUDA_VISIBLE_DEVICES`` writes them); none:
    every GPU the driver sees. Worker i trains on ``cuda_devices[i % len]``."""
    ray_resources: dict[str, float] = field(default_factory=dict)
    """Further Ray resources each run reserves, e.g. ``{proxy_slot = 1}`` against nodes started with
    ``--resources '{"proxy_slot": 4}'`` to cap the runs per node."""
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    """Proxy model and budget."""
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    """Surrogate regressors and their cross-validation."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Mixture optimizer."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Validation at a larger scale."""

    def validate(self) -> None:
        check(self.num_proxies >= 2, "num_proxies", f"must be at least 2, got {self.num_proxies}")
        check(self.surrogate.folds <= self.num_proxies, "surrogate.folds",
              f"{self.surrogate.folds} folds need at least as many proxies ({self.num_proxies})")
        check(len(self.concentration) == 2 and 0 < self.concentration[0] <= self.concentration[1], "concentration",
              f"must be [low, high] with 0 < low <= high, got {self.concentration}")
        check(self.prior_temperature > 0, "prior_temperature", f"must be positive, got {self.prior_temperature}")
        check(0 <= self.min_weight < 0.5, "min_weight", f"must be in [0, 0.5), got {self.min_weight}")
        check(self.max_epochs > 0, "max_epochs", f"must be positive, got {self.max_epochs}")
        check(self.target_tokens >= 0, "target_tokens", f"must be >= 0 (0: the validation run's), got {self.target_tokens}")
        for group, weight in self.objective.items():
            check(weight >= 0, f"objective.{group}", f"must be >= 0, got {weight}")
        check(not self.objective or sum(self.objective.values()) > 0, "objective", "needs a positive weight")
        check(self.noise_seeds == 0 or self.noise_seeds >= 2, "noise_seeds",
              f"must be 0 or at least 2 (a spread needs two), got {self.noise_seeds}")
        check(self.workers >= 1, "workers", f"must be at least 1, got {self.workers}")
        check(self.threads_per_worker >= 1, "threads_per_worker", f"must be at least 1, got {self.threads_per_worker}")
        check(self.gpus_per_run == -1 or self.gpus_per_run >= 0, "gpus_per_run",
              f"must be >= 0 (or -1 for auto), got {self.gpus_per_run}")
        check(self.cuda_devices is None or all(str(d).strip() for d in self.cuda_devices), "cuda_devices",
              "must list device ids (or be left out for every visible GPU)")
        for name, amount in self.ray_resources.items():
            check(amount >= 0, f"ray_resources.{name}", f"must be >= 0, got {amount}")
        check(self.optimizer.method != "slsqp" or self.surrogate.kind != "lightgbm", "optimizer.method",
              "slsqp needs a differentiable surrogate; use topk (or auto) with lightgbm")
