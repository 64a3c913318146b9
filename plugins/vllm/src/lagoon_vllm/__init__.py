"""lagoon's vLLM plugin: what stock vLLM needs to serve and RL-train a Laguna model on CPU.

vLLM loads it in every process (API server, engine core, workers) through the ``vllm.general_plugins``
entry point, before any model is built. It does two things, both no-ops where vLLM does not need them:

- `lagoon_vllm.routing`: Laguna routes with a sigmoid and a selection-only correction bias, without expert
  groups. vLLM's CPU router handles sigmoid scoring only on its grouped top-k path (its plain path asserts
  softmax), so on CPU the plugin sends such routing through grouped top-k with one group
  (``num_expert_group = topk_group = 1``), which selects exactly top-k of sigmoid + bias and weights the
  chosen experts by their renormalized sigmoid scores — Laguna's routing (DeepSeek-V3 §2.1.2).
- `lagoon_vllm.gloo_engine`: a weight-transfer engine named ``gloo`` for vLLM's native RL protocol
  (``/init_weight_transfer_engine``, ``/start_weight_update``, ``/update_weights``, ``/finish_weight_update``):
  the packed, bucketed broadcast of vLLM's NCCL engine carried by torch.distributed's gloo backend, so a
  CPU trainer can move weights into a CPU vLLM server. Start vLLM with
  ``--weight-transfer-config '{"backend": "gloo"}'``.
"""

from __future__ import annotations

__version__ = "0.1.0"


def register() -> None:
    """vLLM's plugin hook (called once per process)."""
    from lagoon_vllm.gloo_engine import register_engine
    from lagoon_vllm.routing import patch_cpu_sigmoid_routing

    patch_cpu_sigmoid_routing()
    register_engine()
