"""`lagoon report`: a self-contained HTML page from run directories (one run, or a sweep with seeds)."""

from __future__ import annotations

import base64
import math
import re

import pytest

from lagoon.cli import main
from lagoon.report import build_report
from lagoon.train.metrics import MetricsWriter


def _fake_run(directory, seed: int, speed: float, steps: int = 40, lr: float = 0.01) -> None:
    """Write a run's metrics and events with lagoon's own writer (a decaying loss, periodic evaluations)."""
    directory.mkdir(parents=True)
    (directory / "config.toml").write_text(f'[model]\nhidden_size = 64\n[optim]\nname = "muon"\nlr = {lr}\n')
    writer = MetricsWriter(directory, active=True)
    for step in range(1, steps + 1):
        row = {"step": step, "loss": 6 * math.exp(-speed * step) + 2 + 0.01 * seed, "lr": 1e-3 * min(1, step / 5),
               "grad_norm": 1 / step, "tokens_per_s": 1000.0 + seed, "tokens": step * 512,
               "max_load": 1.5 - step / 100, "min_load": 0.5 + step / 100}
        if step % 10 == 0:
            row.update({"eval_bpb/code": 3 - step / 40, "eval_bpb/math": 2.5 - step / 50})
        writer.write(row)
    writer.event("checkpoint_skipped", message="skipping checkpoint step_00000040: model.safetensors is missing")
    writer.close()


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _assert_offline(page: str) -> None:
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', page), "the page must not reference anything outside itself"


def test_single_run_report_has_every_figure_and_opens_offline(tmp_path, capsys):
    run = tmp_path / "run"
    _fake_run(run, seed=0, speed=0.1)
    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (run / "report.html").read_text()
    _assert_offline(page)
    for title in ("Summary", "Training loss", "Learning rate", "bits per byte per capability group", "Expert load",
                  "Events"):
        assert title in page, title
    images = _images(page)
    assert len(images) == 5 and all(image.startswith(b"\x89PNG") for image in images)
    assert "model.safetensors is missing" in page


def test_sweep_report_bands_seeds_of_each_setting(tmp_path):
    for setting, speed in (("muon", 0.15), ("adamw", 0.1)):
        for seed in range(2):
            _fake_run(tmp_path / "sweep" / setting / f"seed{seed}", seed, speed)
    out = build_report(tmp_path / "sweep", out=tmp_path / "cmp.html", title="Muon vs AdamW")
    page = out.read_text()
    _assert_offline(page)
    assert "Muon vs AdamW" in page and "4 runs" in page
    assert page.count("<tr>") >= 5   # the summary lists every run
    assert "muon/seed1" in page and "adamw/seed0" in page
    assert len(_images(page)) >= 4 and "Learning-rate sweep" not in page   # one rate only: no sweep plot
    only = build_report(tmp_path / "sweep", out=tmp_path / "muon.html", include=["muon"]).read_text()
    assert "muon/seed0" in only and "adamw/seed0" not in only


def test_learning_rate_sweep_section(tmp_path):
    for lr in (0.001, 0.002, 0.004):
        _fake_run(tmp_path / "sweep" / f"muon_lr{lr}" / "seed0", 0, speed=0.1 + lr, lr=lr)
    page = build_report(tmp_path / "sweep").read_text()
    assert "Learning-rate sweep" in page


def test_report_of_a_directory_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no metrics.jsonl" in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_tensorboard_event_files_decode_with_protobuf(tmp_path, capsys):
    """The hand-written event file parses as TFRecords of TensorFlow's Event/Summary messages."""
    import struct

    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from lagoon.report.tensorboard import crc32c

    assert crc32c(b"123456789") == 0xE3069283   # the CRC-32C check value (RFC 3720 §B.4)
    run = tmp_path / "run"
    _fake_run(run, seed=0, speed=0.1, steps=12)
    assert main(["report", str(run), "--tensorboard"]) == 0
    (path,) = (run / "tensorboard").glob("events.out.tfevents.*")

    # Event and Summary as in tensorflow/core/util/event.proto and framework/summary.proto (the fields used).
    proto = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="t")
    value = proto.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=9, label=1)
    value.field.add(name="simple_value", number=2, type=2, label=1)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=11, label=3, type_name=".t.Value")
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=1, label=1)
    event.field.add(name="step", number=2, type=3, label=1)
    event.field.add(name="file_version", number=3, type=9, label=1)
    event.field.add(name="summary", number=5, type=11, label=1, type_name=".t.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))

    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
        offset += 12 + length + 4
    assert events[0].file_version == "brain.Event:2"
    assert [e.step for e in events[1:]] == list(range(1, 13))
    tags = {v.tag: v.simple_value for v in events[10].summary.value}
    assert tags["eval_bpb/code"] == pytest.approx(3 - 10 / 40) and "loss" in tags
