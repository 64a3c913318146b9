"""Loading slice by slice and exporting tensor by tensor: sharded Hugging Face files, FSDP2 ranks reading only
their rows, bounded-memory export of a sharded checkpoint, and from_pretrained without a second copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lagoon.model import LagunaForCausalLM, from_pretrained, preset_config, save_pretrained
from lagoon.parallel.config import ParallelConfig
from lagoon.parallel.export import stream_export
from tests.conftest import ROOT
from tests.optim.distributed_helpers import spawn


def _model(seed: int = 0, **overrides) -> LagunaForCausalLM:
    torch.manual_seed(seed)
    config = preset_config("tiny", vocab_size=97, hidden_size=48, head_dim=12, num_key_value_heads=2,
                           num_attention_heads=4, intermediate_size=40, moe_intermediate_size=24,
                           shared_expert_intermediate_size=20, num_hidden_layers=3, num_dense_layers=1,
                           num_experts=5, num_experts_per_tok=2, **overrides)
    model = LagunaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * 0.1)   # no constant tensors: every slice is distinguishable
    return model


def test_sharded_export_reloads_in_bf16_without_an_fp32_copy(tmp_path):
    model = _model()
    save_pretrained(model, tmp_path / "single")
    # A tiny file budget forces one file per tensor or so: the multi-file form with its index.
    stream_export(tmp_path / "single", tmp_path / "sharded", torch.bfloat16, shard_bytes=20_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    assert json.loads((tmp_path / "sharded" / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = from_pretrained(tmp_path / "sharded", dtype="auto")
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.to(torch.bfloat16)), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _fsdp_reads_its_rows(rank: int, world_size: int, source: str, out: str) -> None:
    from lagoon.model.hf import read_config
    from lagoon.parallel.load import load_weights
    from lagoon.parallel.materialize import local_part, local_region, materialize
    from lagoon.parallel.mesh import ParallelDims, build_mesh
    from lagoon.parallel.parallelize import parallelize

    config = ParallelConfig(dp_replicate=1, dp_shard=-1)
    mesh = build_mesh(ParallelDims.resolve(config, world_size), "cpu")
    with torch.device("meta"):
        model = LagunaForCausalLM(read_config(Path(source)))
    parallelize(model, mesh, config)
    materialize(model, "cpu")
    load_weights(model, source, distributed=True)
    rows = {name: (local_region(t)[0].start, local_region(t)[0].stop, local_part(t).clone())
            for name, t in model.state_dict().items()}
    torch.save(rows, f"{out}/rank{rank}.pt")


@pytest.mark.timeout(300)
def test_fsdp_ranks_fill_their_rows_from_hugging_face_files(tmp_path):
    model = _model(1)
    save_pretrained(model, tmp_path / "hf")
    spawn(_fsdp_reads_its_rows, 2, str(tmp_path / "hf"), str(tmp_path))
    full = model.state_dict()
    for rank in range(2):
        for name, (start, stop, local) in torch.load(tmp_path / f"rank{rank}.pt").items():
            if name == "lm_head.weight" and model.config.tie_word_embeddings:
                continue
            assert torch.equal(local, full[name][start:stop]), (rank, name)
            if full[name].shape[0] > 1 and "e_score_correction_bias" not in name:
                assert stop - start < full[name].shape[0], (name, "a rank read more than its rows")


PEAK = """
import json, sys, torch
from lagoon.model import from_pretrained

def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

torch.set_num_threads(1)
from_pretrained(sys.argv[1], dtype=torch.bfloat16)     # the tiny one: imports, allocator, code paths warmed
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")           # reset the peak (VmHWM) to the current RSS
model = from_pretrained(sys.argv[2], dtype=torch.bfloat16)
print(json.dumps({"extra_bytes": status("VmHWM") - before}))
"""


@pytest.mark.timeout(300)
def test_from_pretrained_bf16_peaks_near_the_checkpoint_size(tmp_path):
    """A bf16 checkpoint of ~60 MB loads with a peak of at most 1.2× its bytes above a tiny model's load."""
    tiny = _model(2)
    save_pretrained(tiny, tmp_path / "tiny", dtype=torch.bfloat16)
    torch.manual_seed(3)
    big = LagunaForCausalLM(preset_config("tiny", vocab_size=4096, hidden_size=512, head_dim=64, num_hidden_layers=4,
                                          intermediate_size=1024, moe_intermediate_size=512,
                                          shared_expert_intermediate_size=512, num_experts=8))
    save_pretrained(big, tmp_path / "big", dtype=torch.bfloat16)
    del big
    size = sum(p.stat().st_size for p in (tmp_path / "big").glob("*.safetensors"))
    result = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "tiny"), str(tmp_path / "big")], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    extra = json.loads(result.stdout.strip().splitlines()[-1])["extra_bytes"]
    print(f"bf16 checkpoint {size / 2**20:.1f} MiB: peak RSS above the tiny load {extra / 2**20:.1f} MiB "
          f"({extra / size:.2f}x)")
    assert extra <= 1.2 * size, extra / size
