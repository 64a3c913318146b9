"""The report's expert-load section draws the per-layer and per-EP-rank statistics `update_router_biases` logs."""

from __future__ import annotations

import base64
import re

import torch

from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.report import build_report
from lagoon.train.metrics import MetricsWriter


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_per_layer_and_per_rank_load_reach_the_report(tmp_path):
    """Rows written from the model's own statistics (two sparse layers, experts marked as split over 2 ranks)."""
    model = LagunaForCausalLM(preset_config("tiny", num_hidden_layers=3, vocab_size=64)).train()
    for block in model.moe_blocks():
        block.experts.num_shards = 2  # what expert parallelism sets; the statistics only group the counts
    writer = MetricsWriter(tmp_path, active=True)
    for step in range(1, 7):
        ids = torch.randint(0, 64, (2, 16))
        model(ids, targets=ids)
        stats = model.update_router_biases()
        assert {"max_load", "min_load", "ep_max_load", "max_load/layer1", "max_load/layer2",
                "ep_max_load/layer1", "ep_max_load/layer2"} <= set(stats)
        writer.write({"step": step, "loss": 1.0 / step, **stats})
    writer.close()
    page = build_report(tmp_path).read_text()
    assert "Load imbalance per MoE layer" in page and "expert-parallel rank" in page
    images = _images(page)  # the loss, the expert load over steps and the layer × step map
    assert len(images) == 3 and all(image.startswith(b"\x89PNG") for image in images)
