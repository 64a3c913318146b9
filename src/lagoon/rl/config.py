"""The ``[rl]`` section: asynchronous on-policy agent RL (trainer, actors, inference servers, trajectory table).

    [rl]
    init_checkpoint = "runs/pretrain/checkpoints/step_00000400"   # or empty + [rl.sft] for a warm-up
    total_steps = 60
    [rl.tasks]    which tasks, how many attempts per task (the group), epochs
    [rl.actor]    how actors sample, filter and append
    [rl.trainer]  batch, staleness bound, CISPO, optimizer, checkpoints
    [rl.weights]  how new weights reach the inference servers
    [rl.servers]  local `lagoon serve` processes, or URLs of servers started elsewhere
    [rl.table]    the Iceberg catalog and table
    [rl.sft]      optional supervised warm-up on the task set's transcripts before RL
    [rl.eval]     held-out evaluation before and after RL
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from lagoon.errors import check


@dataclass
class TableConfig:
    """Where trajectories are written: an Apache Iceberg table through pyiceberg."""

    catalog: Literal["sql", "rest"] = "sql"
    """``sql``: a SQLite catalog (or any SQLAlchemy URI) with a local warehouse; ``rest``: an Iceberg REST catalog."""
    uri: str = ""
    """Catalog URI; empty means ``sqlite:///RUN_DIR/trajectories/catalog.db`` (sql) — a REST catalog needs one."""
    warehouse: str = ""
    """Warehouse location; empty means ``file://RUN_DIR/trajectories/warehouse`` (sql) or the server's default (rest)."""
    namespace: str = "lagoon"
    """Iceberg namespace of the table."""
    name: str = "trajectories"
    """Table name inside the namespace."""
    properties: dict[str, str] = field(default_factory=dict)
    """Extra catalog properties passed to pyiceberg (credentials, ``s3.endpoint``, ``token``, ...)."""
    expire_every_steps: int = 10
    """The trainer expires snapshots older than its last checkpointed read position every this many steps (0: never)."""
    retain_snapshots: int = 20
    """Expiry always keeps at least this many newest snapshots, whatever the trainer has consumed."""

    def validate(self) -> None:
        check(self.catalog == "sql" or bool(self.uri), "uri", "a REST catalog needs its URI, e.g. http://host:8181")
        check(bool(self.namespace), "namespace", "must not be empty")
        check(bool(self.name), "name", "must not be empty")
        check(self.expire_every_steps >= 0, "expire_every_steps", "must be >= 0")
        check(self.retain_snapshots >= 1, "retain_snapshots", "must be >= 1")


@dataclass
class TasksConfig:
    """The task stream actors pull from."""

    task_set: str = "arith-code"
    """Name of a task set registered in `lagoon.agent`."""
    seed: int = 0
    """Seed of the task generator (training tasks)."""
    num_tasks: int = 256
    """Tasks per epoch."""
    epochs: int = 1000
    """Passes over the tasks; actors stop when all are done (the trainer usually stops first)."""
    group_size: int = 8
    """G: attempts per task; advantages are normalized within each group."""
    shuffle: bool = True
    """Visit tasks in a fresh seeded order every epoch."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra task-set options (e.g. ``difficulty``), passed to the task set."""

    def validate(self) -> None:
        check(self.num_tasks > 0, "num_tasks", "must be positive")
        check(self.epochs > 0, "epochs", "must be positive")
        check(self.group_size >= 2, "group_size", "needs at least 2 attempts per task to normalize advantages")


@dataclass
class ActorConfig:
    """Actors: run the harness against the current policy, grade, filter and append to the table."""

    num_actors: int = 1
    """Actor processes (or Ray actors); each takes every num_actors-th task slot."""
    backend: Literal["process", "ray"] = "process"
    """``process``: one OS process per actor; ``ray``: Ray actors (``ray.init`` with `ray_address`)."""
    ray_address: str = ""
    """Ray cluster address; empty starts a local Ray instance."""
    concurrent_episodes: int = 8
    """Episodes an actor runs at once (threads; generation is I/O-bound on the server). The episodes
    themselves follow ``[agent]``: its budgets, sandbox and sampling (use temperature 1 and top-p 1 for RL,
    so the sampler's distribution μ is the policy's own)."""
    append_every_groups: int = 1
    """Groups buffered before one append to the table (one Iceberg snapshot per append)."""
    filter_zero_variance: bool = True
    """Drop groups whose rewards are all equal (zero advantage: no learning signal)."""
    drop_truncated: bool = False
    """Drop episodes cut off by the turn or token limit (else they keep their reward)."""
    drop_errored: bool = True
    """Drop episodes whose harness or sandbox failed (infrastructure errors, not model mistakes) after their
    retries; they are counted in the actor's health file (`lagoon.rl.health`), never dropped silently."""
    request_timeout_s: float = 120.0
    """Timeout of one completion request."""
    infra_retries: int = 2
    """Times an episode that failed on the infrastructure (server error or timeout, sandbox failure, harness
    error) is run again, with backoff, before it counts as errored. Safe: nothing of an episode is kept
    until its group is appended."""
    max_consecutive_infra_failures: int = 24
    """Infrastructure failures in a row (failed episode attempts and failed table appends, with no episode
    completing and no append landing in between) after which the actor stops with one line and exit code 3,
    and the run with it: a broken server, sandbox or table, not a flaky one. 0: never stop."""

    def validate(self) -> None:
        check(self.num_actors >= 1, "num_actors", "must be >= 1")
        check(self.infra_retries >= 0, "infra_retries", "must be >= 0")
        check(self.max_consecutive_infra_failures >= 0, "max_consecutive_infra_failures", "must be >= 0 (0: never stop)")
        check(self.concurrent_episodes >= 1, "concurrent_episodes", "must be >= 1")
        check(self.append_every_groups >= 1, "append_every_groups", "must be >= 1")
        check(self.request_timeout_s > 0, "request_timeout_s", "must be positive")


@dataclass
class TrainerConfig:
    """The CISPO trainer."""

    groups_per_step: int = 8
    """B: groups consumed per optimizer step (each group has `tasks.group_size` trajectories)."""
    max_staleness: int = 2
    """η: the most policy versions a trajectory may lag the trainer. Actors hold back new episodes so
    that at most (η + 1)·B groups are outstanding (AReaL, Fu et al. 2025, §5.1); older data is dropped."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over the first steps (the rates themselves are ``[optim]``'s, with
    ``[rl.optim]`` replacing keys for the RL phase)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the trainer computes (auto: CUDA when available)."""
    processes: int = 1
    """Data-parallel trainer processes `lagoon rl` starts (> 1: under torchrun; gloo on CPU, NCCL on GPU)."""
    max_restarts: int = 3
    """Times `lagoon rl` restarts a trainer that died (it resumes from its last checkpoint)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    epsilon_high: float = 2.0
    """CISPO's upper IS-weight clip 1 + ε_high (MiniMax-M1, arXiv:2506.13585 §3.1)."""
    epsilon_low: float = 1.0
    """CISPO's lower clip 1 − ε_low; MiniMax-M1 leaves it unbounded, which ε_low = 1 reproduces (weights ≥ 0)."""
    advantage_std_normalize: bool = True
    """Divide group-centred rewards by the group's standard deviation (GRPO); false keeps only the centring."""
    micro_batch_tokens: int = 4096
    """Padded tokens per forward/backward pass (gradients accumulate over the step's batch)."""
    row_tokens: int = 512
    """Sequences are packed into rows of at most this many tokens (a longer sequence gets its own row);
    attention costs grow with the square of the row length, whatever the document mask."""
    checkpoint_every: int = 5
    """Save a trainer checkpoint (weights, optimizer, table read position) every this many steps."""
    keep_last: int = 2
    """Trainer checkpoints kept on disk."""
    publish_every: int = 1
    """Publish new weights to the inference servers every this many steps."""
    poll_interval_s: float = 0.25
    """How often the trainer looks for new snapshots while it waits for data."""
    seed: int = 0
    """Seed of the trainer's RNG."""
    routing_replay: bool = False
    """Routing replay (R3): every MoE layer routes each token to the experts the rollout engine chose for it
    (stored in the trajectory table), while the gate weights still come from the trainer's own router over
    its full logits, so gradients reach the router (`lagoon.rl.replay`). Tokens without recorded experts
    route as usual."""

    def validate(self) -> None:
        check(self.groups_per_step >= 1, "groups_per_step", "must be >= 1")
        check(self.processes >= 1, "processes", "must be >= 1")
        check(self.max_restarts >= 0, "max_restarts", "must be >= 0")
        check(self.max_staleness >= 0, "max_staleness", "must be >= 0")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0")
        check(self.epsilon_high > 0, "epsilon_high", "must be positive")
        check(0 < self.epsilon_low <= 1, "epsilon_low", "must be in (0, 1]")
        check(self.micro_batch_tokens >= 16, "micro_batch_tokens", "must be at least 16")
        check(self.row_tokens >= 16, "row_tokens", "must be at least 16")
        check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        check(self.keep_last >= 1, "keep_last", "must be >= 1")
        check(self.publish_every >= 1, "publish_every", "must be >= 1")
        check(self.poll_interval_s > 0, "poll_interval_s", "must be positive")

    _MOVED = {
        "learning_rate": "the RL trainer reads [optim]; set optim.lr and optim.adamw_lr (or rl.optim.lr and "
                         "rl.optim.adamw_lr to change them for the RL phase only)",
        "optimizer": "set optim.name (or rl.optim.name for the RL phase only)",
        "weight_decay": "set optim.weight_decay (or rl.optim.weight_decay for the RL phase only)",
        "betas": "set optim.adamw_betas (or rl.optim.adamw_betas for the RL phase only)",
    }


@dataclass
class WeightsConfig:
    """How the trainer's new weights reach the inference servers."""

    transfer: Literal["auto", "shared_memory", "files", "shm", "broadcast"] = "auto"
    """``shared_memory``: the trainer copies each tensor once into a segment in /dev/shm and every server (on
    this machine) copies it straight into its parameters (``POST /v1/weights/load_shared``,
    `lagoon.weights.shared_memory`); the version directory under RUN_DIR/weights is written after the servers
    have the weights. ``files``: a versioned safetensors directory under RUN_DIR/weights that servers load;
    ``shm``: the same directory in /dev/shm; ``broadcast``: torch.distributed broadcast in buckets from the
    trainer to every server (gloo on CPU, NCCL on GPU), with pause/update/resume. ``auto``: ``shared_memory``
    when every server URL is a loopback address and /dev/shm has room for two copies of the weights,
    otherwise ``files`` (servers elsewhere then need RUN_DIR on a shared file system, or set ``broadcast``)."""
    backend: Literal["gloo", "nccl"] = "gloo"
    """torch.distributed backend of the broadcast."""
    bucket_mb: float = 4.0
    """Bucket size of the broadcast in MiB (gloo over loopback was 2–7× faster in 1–8 MiB buckets than in
    64 MiB ones on a 2-core machine, docs/LOG.md 2026-11-29; NCCL prefers larger ones)."""
    master_addr: str = "127.0.0.1"
    """Address the trainer listens on for the broadcast group."""
    master_port: int = 0
    """Port of the broadcast group's rendezvous (0: a free one, chosen per update)."""
    keep_versions: int = 3
    """Published weight versions kept in the store (older ones are deleted)."""
    pause_mode: Literal["keep", "abort"] = "keep"
    """During an update, in-flight requests wait (keep) or are aborted and retried by the actor (abort)."""
    check_tolerance: float = 0.0
    """vLLM servers: the largest difference allowed between a server's and the trainer's log-probabilities of
    a fixed probe sequence after each update (`lagoon.weights.probe`); 0 picks 1e-3 for float32 servers and
    5e-2 for bfloat16/float16 ones."""

    def validate(self) -> None:
        check(self.bucket_mb > 0, "bucket_mb", "must be positive")
        check(self.check_tolerance >= 0, "check_tolerance", "must be >= 0 (0: by the servers' dtype)")
        check(0 <= self.master_port < 65536, "master_port", "must be a TCP port (0: any free one)")
        check(self.keep_versions >= 2, "keep_versions", "must be >= 2 (the served version and the next)")


@dataclass
class ServersConfig:
    """Inference servers the actors sample from."""

    engine: Literal["lagoon", "vllm"] = "lagoon"
    """The rollout engine: ``lagoon`` (`lagoon serve`, the embedded default) or ``vllm`` (stock vLLM with
    lagoon's plugin, `lagoon.rl.vllm_servers`; weights move by vLLM's native RL protocol, `lagoon.weights.vllm`)."""
    vllm_python: str = ""
    """The Python of the environment that has vLLM and lagoon's plugin; empty: the repository's ``.venv-vllm``
    (``make vllm-env``), else ``python`` of the ``VLLM_PYTHON`` environment variable."""
    served_model_name: str = "policy"
    """The model name vLLM servers answer to (lagoon's servers answer to any)."""
    vllm_args: list[str] = field(default_factory=list)
    """Extra arguments for local vLLM servers, e.g. ``["--enable-return-routed-experts"]`` on GPUs (routing
    replay; vLLM 0.32 refuses it on CPU) or ``["--tensor-parallel-size", "2"]``."""
    count: int = 1
    """Local `lagoon serve` processes started by `lagoon rl` (ignored when `urls` is given)."""
    host: str = "127.0.0.1"
    """Host the local servers bind to."""
    base_port: int = 0
    """Port of the first local server, the others taking the following ports; 0 picks free ports."""
    urls: list[str] = field(default_factory=list)
    """URLs of servers started elsewhere (e.g. ``http://gpu-7:8000``); empty: start `count` local servers."""
    threads: int = 1
    """torch threads per local server."""
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    """Torch device of each local server, cycled over the servers (e.g. ``["cuda:6", "cuda:7"]``)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and activations dtype of the local servers; float32 keeps the sampler's token probabilities
    equal to the trainer's up to numerics (μ = π), lower precision trades that for speed (CISPO's truncated
    importance weights absorb the gap)."""
    max_batch_size: int = 32
    """Requests a local server decodes together."""
    startup_timeout_s: float = 180.0
    """How long to wait for a server's /health."""

    def validate(self) -> None:
        check(self.count >= 1 or bool(self.urls), "count", "needs at least one server")
        check(0 <= self.base_port < 65536, "base_port", "must be a TCP port (0: pick free ones)")
        check(self.threads >= 1, "threads", "must be >= 1")
        check(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        check(len(self.devices) >= 1, "devices", "needs at least one device")
        check(bool(self.served_model_name), "served_model_name", "must not be empty")


@dataclass
class SFTConfig:
    """Supervised warm-up on the task set's transcripts (the format the harness expects)."""

    steps: int = 0
    """Optimizer steps (0: no warm-up; RL starts from `init_checkpoint`). With `init_checkpoint` given, the
    warm-up fine-tunes that checkpoint (its tokenizer, its shape); without, it trains `[model]` from scratch."""
    batch_size: int = 16
    """Transcripts per step."""
    learning_rate: float = 3e-3
    """AdamW learning rate (cosine-decayed to 10%)."""
    num_examples: int = 2000
    """Distinct transcripts generated (with their own seed, disjoint from the RL tasks)."""
    seed: int = 1
    """Seed of the transcript generator and the initialization."""
    warmup_steps: int = 20
    """Linear learning-rate warm-up."""

    def validate(self) -> None:
        check(self.steps >= 0, "steps", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.learning_rate > 0, "learning_rate", "must be positive")
        check(self.num_examples >= 1, "num_examples", "must be >= 1")


@dataclass
class EvalConfig:
    """Held-out evaluation of the policy (before and after RL)."""

    num_tasks: int = 64
    """Held-out tasks (a seed disjoint from training)."""
    seed: int = 12345
    """Seed of the held-out tasks."""
    attempts: int = 1
    """Samples per held-out task."""
    temperature: float = 1.0
    """Sampling temperature for evaluation."""

    def validate(self) -> None:
        check(self.num_tasks >= 0, "num_tasks", "must be >= 0")
        check(self.attempts >= 1, "attempts", "must be >= 1")
        check(self.temperature > 0, "temperature", "must be positive")


@dataclass
class RLConfig:
    """Asynchronous on-policy agent RL."""

    init_checkpoint: str = ""
    """Checkpoint the policy starts from (a lagoon or Hugging Face Laguna directory), fine-tuned first when
    `[rl.sft]` has steps; empty: the SFT warm-up trains one from scratch."""
    tokenizer: str = ""
    """Tokenizer directory; empty: the one in `init_checkpoint` (or the task set's default for the warm-up)."""
    run_id: str = ""
    """Identifier written into every trajectory; empty: the run directory's name."""
    total_steps: int = 50
    """Trainer steps (policy versions) to run."""
    time_limit_s: float = 0.0
    """Stop the trainer after this many seconds of RL (0: no limit); `lagoon rl` then finishes the run as
    usual (held-out evaluation of the last published version, result). Benchmarks compare runs this way."""
    tasks: TasksConfig = field(default_factory=TasksConfig)
    """The task stream."""
    actor: ActorConfig = field(default_factory=ActorConfig)
    """Actors."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The CISPO trainer."""
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    """Weight publication."""
    servers: ServersConfig = field(default_factory=ServersConfig)
    """Inference servers."""
    table: TableConfig = field(default_factory=TableConfig)
    """The trajectory table."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Optional supervised warm-up."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    optim: dict[str, Any] = field(default_factory=dict)
    """Keys of ``[optim]`` replaced for the RL phase (the SFT warm-up and the RL trainer), e.g. ``{name =
    "adamw", lr = 2e-4}`` in a pipeline whose pretraining runs Muon at a higher rate; empty: ``[optim]`` as is.
    Both trainers build their optimizer from the one ``OptimConfig`` type (`optim_config`)."""

    def optim_config(self, optim: Any) -> Any:
        """The pipeline's ``[optim]`` with ``[rl.optim]``'s keys replaced, validated."""
        from lagoon.configio import from_dict, to_dict
        from lagoon.optim.config import OptimConfig

        return from_dict(OptimConfig, {**to_dict(optim), **self.optim}, "rl.optim")

    def validate(self) -> None:
        from lagoon.configio import from_dict
        from lagoon.optim.config import OptimConfig

        unknown = sorted(set(self.optim) - {f.name for f in dataclasses.fields(OptimConfig)})
        check(not unknown, f"optim.{unknown[0]}" if unknown else "optim", "unknown key; rl.optim replaces keys of [optim]")
        from_dict(OptimConfig, self.optim, "optim")   # each replaced value is checked like [optim]'s own
        check(self.total_steps >= 1, "total_steps", "must be >= 1")
        check(self.time_limit_s >= 0, "time_limit_s", "must be >= 0 (0: no limit)")
