"""The ``[demo]`` section: which stages the end-to-end pipeline runs and how the pretraining is launched."""

from __future__ import annotations

from dataclasses import dataclass, field

from lagoon.errors import check

STAGES = ("data", "automix", "pretrain", "export", "rl", "evaluate", "report")


@dataclass
class DemoConfig:
    """The main job: data build → AutoMixer → pretraining → HF export → RL → evaluation → report."""

    stages: list[str] = field(default_factory=lambda: list(STAGES))
    """Stages to run, in pipeline order; a finished stage is skipped on a rerun."""
    pretrain_ranks: int = 2
    """Data-parallel processes for pretraining (torchrun with gloo on CPU, NCCL on GPUs); 1 runs in-process."""
    use_automix_mixture: bool = True
    """Pretrain on the mixture AutoMixer chose (false: the natural mixture of the shard set)."""
    check_transformers: bool = True
    """At evaluation, load the exported checkpoint with transformers' LagunaForCausalLM and compare its logits
    with lagoon's. Needs transformers (``pip install 'lagoon[hf]'``; `make demo` installs it): without it a
    pipeline that includes the evaluation stops before its first stage, in one line."""
    eval_tokens: int = 16384
    """Held-out tokens per capability group when the evaluation stage measures bits per byte."""

    def validate(self) -> None:
        for i, stage in enumerate(self.stages):
            check(stage in STAGES, f"stages[{i}]", f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        order = [STAGES.index(stage) for stage in self.stages]
        check(order == sorted(order) and len(set(order)) == len(order), "stages",
              f"must be distinct and in pipeline order ({', '.join(STAGES)})")
        check(self.pretrain_ranks >= 1, "pretrain_ranks", "must be at least 1")
        check(self.eval_tokens > 0, "eval_tokens", "must be positive")
