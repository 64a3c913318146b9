"""Weights through shared memory: trainer → segment → served parameters, the seqlock, the route, the RL wiring."""

from __future__ import annotations

import struct
import threading

import httpx
import pytest
import torch

from lagoon.errors import LagoonError
from lagoon.weights.shared_memory import VERSION_OFFSET, SegmentCache, SharedSegment, SharedWeightWriter
from lagoon.weights.tensors import ordered_tensors, weights_digest
from lagoon.model import from_pretrained
from tests.infer.conftest import Server, tiny_model

pytestmark = pytest.mark.timeout(180)

PROMPT = [2, 50, 60, 70, 80, 90]


def _logits(model, tokens=PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits


@pytest.fixture(scope="module")
def server(checkpoint):
    server = Server(checkpoint, "--max-batch", "4")
    yield server
    logs = server.stop()
    assert "Traceback" not in logs, logs


def test_round_trip_gives_the_trainers_exact_weights_and_logits(tmp_path, checkpoint):
    trainer = tiny_model(sliding_window=16, seed=9)
    served = from_pretrained(checkpoint, dtype=torch.float32)
    assert not torch.equal(_logits(trainer), _logits(served))
    writer = SharedWeightWriter(tmp_path / "segments")
    write = writer.write(trainer, version=3)
    payload = sum(t.nbytes for _, t in ordered_tensors(trainer))
    assert write.path.name == "slot-1.bin" and write.num_bytes >= payload
    segment = SharedSegment.open(write.path)
    assert segment.problem(served) is None
    assert segment.copy_into(served, 3) == payload
    assert weights_digest(served) == weights_digest(trainer)
    assert torch.equal(_logits(served), _logits(trainer))

    # The next version goes to the other slot; the mapped one is reused, not re-created.
    with torch.no_grad():
        for parameter in trainer.parameters():
            parameter.mul_(0.5)
    cache = SegmentCache()
    second = writer.write(trainer, version=4)
    assert second.path.name == "slot-0.bin"
    cache.get(second.path).copy_into(served, 4)
    assert torch.equal(_logits(served), _logits(trainer))
    writer.remove()
    assert not (tmp_path / "segments").exists()
    with pytest.raises(LagoonError, match="does not exist"):
        cache.get(second.path)
    assert not cache._segments        # the removed file's mapping is let go, so tmpfs can free its pages
    segment.close()
    cache.close()


class _Tripwire(torch.Tensor):
    """A parameter that runs `hook` once, when the reader starts copying into it (a writer lapping the reader
    at a known point of the copy)."""

    hook = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.copy_ and cls.hook is not None:
            hook, cls.hook = cls.hook, None
            hook()
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_read_the_writer_overtakes_is_rejected(tmp_path):
    trainer = tiny_model(seed=1)
    writer = SharedWeightWriter(tmp_path)
    write = writer.write(trainer, version=2)
    segment = SharedSegment.open(write.path)

    # Before: a version other than the one asked for, or a slot being written (-1).
    with pytest.raises(LagoonError, match="holds version 2, not 4"):
        segment.copy_into(tiny_model(seed=2), 4)
    struct.pack_into("<q", writer._maps[0].map, VERSION_OFFSET, -1)
    with pytest.raises(LagoonError, match=r"holds version -1, not 2 \(-1: being written\)"):
        segment.copy_into(tiny_model(seed=2), 2)
    writer.write(trainer, version=2)

    # During: the trainer writes version 4 into the same slot while the server is halfway through version 2.
    targets = {name: tensor.clone().as_subclass(_Tripwire) for name, tensor in ordered_tensors(tiny_model(seed=2))}
    names = sorted(targets)
    _Tripwire.hook = lambda: writer.write(tiny_model(seed=3), version=4)
    middle = {name: targets[name] for name in names}
    with pytest.raises(LagoonError, match="rewritten while it was being read") as error:
        segment.copy_into(middle, 2)
    assert "\n" not in str(error.value)
    # After the lap the slot holds a complete version 4 that reads cleanly.
    fresh = tiny_model(seed=2)
    segment.copy_into(fresh, 4)
    assert weights_digest(fresh) == weights_digest(tiny_model(seed=3))
    segment.close()
    writer.remove()


def test_a_reader_copies_while_the_writer_writes(tmp_path):
    writer = SharedWeightWriter(tmp_path)
    writer.write(tiny_model(seed=1), version=0)
    writer.write(tiny_model(seed=1), version=1)
    trainer = tiny_model(seed=6)
    assert writer.streamable(trainer)
    segment = SharedSegment.open(writer.path(0))
    served = tiny_model(seed=2)
    copied: list = []
    reader = threading.Thread(target=lambda: copied.append(segment.copy_into(served, 2, wait_s=60)))
    reader.start()                       # waits for version 2, which nobody has started writing yet
    writer.write(trainer, version=2)
    reader.join(60)
    assert copied and weights_digest(served) == weights_digest(trainer)

    # A writer that fails halfway marks the slot abandoned: a waiting reader stops at once with one line.
    class Broken(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func is torch.Tensor.reshape:
                raise RuntimeError("device lost")
            return super().__torch_function__(func, types, args, kwargs or {})

    state = dict(ordered_tensors(trainer))
    last = sorted(state)[-1]
    state[last] = state[last].as_subclass(Broken)
    errors: list = []
    reader = threading.Thread(target=lambda: errors.append(_error(lambda: segment.copy_into(served, 4, wait_s=60))))
    reader.start()
    with pytest.raises(RuntimeError, match="device lost"):
        writer.write(state, version=4)
    reader.join(60)
    assert errors and "abandoned writing version 4" in errors[0] and "\n" not in errors[0]
    segment.close()
    writer.remove()


def _error(call) -> str:
    try:
        call()
    except LagoonError as error:
        return str(error)
    return "no error"


def test_missing_foreign_and_wrong_model_segments_are_one_line_errors(tmp_path):
    with pytest.raises(LagoonError, match="does not exist"):
        SharedSegment.open(tmp_path / "nothing.bin")
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"\x00" * 8192)
    with pytest.raises(LagoonError, match="bad magic"):
        SharedSegment.open(foreign)
    (tmp_path / "short.bin").write_bytes(b"LAGOONSW")
    with pytest.raises(LagoonError, match="too short"):
        SharedSegment.open(tmp_path / "short.bin")

    writer = SharedWeightWriter(tmp_path / "wide")
    segment = SharedSegment.open(writer.write(tiny_model(hidden_size=64, seed=4), version=0).path)
    problem = segment.problem(tiny_model())
    assert problem is not None and "shape" in problem and "\n" not in problem
    segment.close()
    writer.remove()


def test_load_shared_route_end_to_end(server, tmp_path, checkpoint):
    trainer = tiny_model(sliding_window=16, seed=9)
    writer = SharedWeightWriter(tmp_path / "segments")
    write = writer.write(trainer, version=1)
    try:
        url = server.url + "/v1/weights/load_shared"
        # The wrong version: 409 and nothing changes.
        wrong = httpx.post(url, json={"path": str(write.path), "version": 2}, timeout=60)
        assert wrong.status_code == 409 and "holds version 1" in wrong.json()["error"]["message"]
        assert httpx.get(server.url + "/v1/weights").json()["policy_version"] == 0

        reply = httpx.post(url, json={"path": str(write.path), "version": 1}, timeout=60)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["policy_version"] == 1 and body["update"]["source"] == "shared"
        assert body["update"]["num_bytes"] > 0 and not body["paused"]
        served = httpx.get(server.url + "/v1/weights").json()
        assert served["digest"] == weights_digest(trainer) and served["complete"]
        # Greedy decoding on the server follows the trainer's weights (its logits are the trainer's).
        completion = httpx.post(server.url + "/v1/completions", json={
            "model": "tiny-laguna", "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "return_token_ids": True,
            "ignore_eos": True}, timeout=60).json()
        assert completion["policy_version"] == 1
        assert completion["choices"][0]["token_ids"][0] == int(_logits(trainer)[0, -1].argmax())

        # Missing, foreign and wrong-model segments: a one-line 400, the weights untouched.
        other = SharedWeightWriter(tmp_path / "other").write(tiny_model(hidden_size=64, sliding_window=16), 2).path
        foreign = tmp_path / "foreign.bin"
        foreign.write_bytes(b"\x01" * 4096)
        for path, expected in ((tmp_path / "absent.bin", "does not exist"), (foreign, "bad magic"),
                               (other, "does not fit the served model")):
            refused = httpx.post(url, json={"path": str(path), "version": 2}, timeout=60)
            assert refused.status_code == 400, refused.text
            message = refused.json()["error"]["message"]
            assert expected in message and "\n" not in message
        assert httpx.get(server.url + "/v1/weights").json()["digest"] == weights_digest(trainer)
    finally:
        writer.remove()


def test_the_rl_publisher_uses_shared_memory_for_local_servers(server, tmp_path):
    from lagoon.rl.config import WeightsConfig
    from lagoon.weights.publish import WeightPublisher, resolve_transfer, segment_root

    config = WeightsConfig()
    assert config.transfer == "auto"
    assert resolve_transfer(config, ["http://gpu-7:8000"], 1000) == "files"
    assert resolve_transfer(config, [server.url], 10**15) == "files"    # no room in /dev/shm for 2 × 1 PB
    publisher = WeightPublisher(config, tmp_path / "run", [server.url])
    trainer = tiny_model(sliding_window=16, seed=5)
    try:
        for version in (7, 8):
            with torch.no_grad():
                for parameter in trainer.parameters():
                    parameter.add_(0.01)
            record = publisher.publish(trainer, version)
            assert record["transfer"] == "shared_memory" and record["failed_servers"] == []
            assert record["streamed"] == (version == 8)    # the second update reuses the mapped files
            (served,) = publisher.server_weights()
            assert served["policy_version"] == version and served["digest"] == weights_digest(trainer)
            assert served["last_update"]["source"] == "shared"
            assert record["digest"] == weights_digest(trainer)        # the version directory, written after
        assert any(segment_root(tmp_path / "run").iterdir())
    finally:
        publisher.close()
    assert not segment_root(tmp_path / "run").exists()
