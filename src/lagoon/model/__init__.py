"""The Laguna architecture (transformers' ``LagunaForCausalLM``), its presets and Hugging Face interop.

    from lagoon import model
    net = model.from_pretrained("path/to/checkpoint")     # lagoon or Hugging Face Laguna directory
    logits = net(input_ids).logits                        # [B, T, V]
    model.save_pretrained(net, "out/")                    # config.json + model.safetensors

Names are imported on first use, so ``lagoon.model.config`` and the CLI's argument parsing do not pay
for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "lagoon.model.config",
    "ParameterCount": "lagoon.model.count",
    "count_parameters": "lagoon.model.count",
    "export_hf": "lagoon.model.hf",
    "from_pretrained": "lagoon.model.hf",
    "import_hf": "lagoon.model.hf",
    "save_pretrained": "lagoon.model.hf",
    "PRESETS": "lagoon.model.presets",
    "preset_config": "lagoon.model.presets",
    "IGNORE_INDEX": "lagoon.model.transformer",
    "LagunaForCausalLM": "lagoon.model.transformer",
    "ModelOutput": "lagoon.model.transformer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lagoon.model' has no attribute {name!r}")
