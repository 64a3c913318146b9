"""The Laguna architecture (transformers' ``LagunaForCausalLM``), its presets and Hugging Face interop.

    from lagoon import model
    net = model.from_pretrained("path/to/checkpoint")     # lagoon or Hugging Face Laguna directory
    logits = net(input_ids).logits                        # [B, T, V]
    model.save_pretrained(net, "out/")                    # config.json + model.safetensors
"""

from lagoon.model.config import ModelConfig
from lagoon.model.count import ParameterCount, count_parameters
from lagoon.model.hf import export_hf, from_pretrained, import_hf, save_pretrained
from lagoon.model.presets import PRESETS, preset_config
from lagoon.model.transformer import IGNORE_INDEX, LagunaForCausalLM, ModelOutput

__all__ = [
    "IGNORE_INDEX", "LagunaForCausalLM", "ModelConfig", "ModelOutput", "PRESETS", "ParameterCount",
    "count_parameters", "export_hf", "from_pretrained", "import_hf", "preset_config", "save_pretrained",
]
