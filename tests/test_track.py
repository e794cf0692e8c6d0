"""The tracking run (pipelines.track) and its batching, on the bundled sample with the tiny model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from ppmtrack.engine import AdaptConfig, Engine
from ppmtrack.pipelines.batching import iter_batches
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.sources import VideoFrame, redact_url
from ppmtrack.pipelines.track import OutputError, output_stem, prepare_output_dir, track_video

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
# Tiny settings: a few seconds of adaptation. Accuracy is the engine's tests' business, not this file's.
TINY_ADAPT = AdaptConfig(steps=5, fg_steps=2, views_per_frame=2, batch_size=2, resolution=128)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine():
    support = read_annotation(SAMPLES / "support.json").to_support()
    return Engine.adapt(support, "tiny", AdaptConfig(**TINY_ADAPT.to_dict()), validation="off")


def count_video_frames(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
    return len(frames), (frames[0].width, frames[0].height)


def test_track_video_writes_csv_video_and_summary_for_selected_frames(engine, tmp_path):
    summary = track_video(SAMPLES / "sample.mp4", engine, tmp_path, start=10, stop=40, stride=2, batch_size=4,
                          progress=False, engine_path="lizard.engine")
    tracks = read_tracks_csv(tmp_path / "sample.csv")
    assert tracks.frame.tolist() == list(range(10, 40, 2))
    assert tracks.names == engine.names
    assert np.isfinite(tracks.raw_xy).all()
    assert count_video_frames(tmp_path / "sample.mp4") == (15, (320, 240))
    doc = json.loads((tmp_path / "sample.summary.json").read_text())
    assert doc["status"] == summary.status == "complete"
    assert doc["csv_positions"] == "rts"
    assert doc["frames_processed"] == 15 and doc["first_frame"] == 10 and doc["last_frame"] == 38
    assert doc["engine"]["name"] == "lizard" and doc["engine"]["keypoints"] == engine.names
    for stage in ("inference", "smoothing", "writing"):
        assert doc["stages"][stage]["frames"] == 15 and doc["stages"][stage]["fps"] > 0
    assert not list(tmp_path.glob(".*.partial*"))  # no temporary file left (engine.atomic naming)


def test_truncated_recording_is_tracked_as_far_as_it_reads(engine, tmp_path):
    # A recorder killed mid-file: Matroska (unlike an MP4 whose index is written last) stays readable.
    remuxed = tmp_path / "full.mkv"
    with av.open(str(SAMPLES / "sample.mp4")) as src, av.open(str(remuxed), "w", format="matroska") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    data = remuxed.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])

    summary = track_video(cut, engine, tmp_path / "out", write_video=False, progress=False)
    assert summary.status == "complete"
    assert 0 < summary.frames_processed < 200
    doc = json.loads((tmp_path / "out" / "cut.summary.json").read_text())
    assert doc["decode_errors"] == summary.decode_errors
    assert doc["frames_read"] >= doc["frames_processed"]
    assert len(read_tracks_csv(tmp_path / "out" / "cut.csv")) == summary.frames_processed


class StopAfterFirstBatch:
    """An engine stand-in that sets the run's stop event after its first prediction, like a Ctrl-C."""

    def __init__(self, engine, stop_event: threading.Event):
        self.engine, self.stop_event = engine, stop_event
        self.names, self.skeleton, self.model, self.resolution = (engine.names, engine.skeleton, engine.model,
                                                                  engine.resolution)

    def predict(self, frames):
        prediction = self.engine.predict(frames)
        self.stop_event.set()
        return prediction

    def reset_stream(self):
        self.engine.reset_stream()


def test_stop_event_closes_outputs_and_reports_interrupted(engine, tmp_path):
    stop = threading.Event()
    summary = track_video(SAMPLES / "sample.mp4", StopAfterFirstBatch(engine, stop), tmp_path, batch_size=4,
                          progress=False, stop_event=stop)
    assert summary.status == "interrupted"
    assert summary.csv_positions == "causal"  # no end-of-file smoothing for a run that did not finish
    assert 4 <= summary.frames_processed < 200
    assert len(read_tracks_csv(tmp_path / "sample.csv")) == summary.frames_processed
    n_video, _ = count_video_frames(tmp_path / "sample.mp4")
    assert 0 < n_video <= summary.frames_processed
    assert json.loads((tmp_path / "sample.summary.json").read_text())["status"] == "interrupted"


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write outputs"):
        prepare_output_dir(blocker / "out")


def test_url_stem_drops_credentials_and_query():
    url = "rtsp://user:secret@10.0.0.5:554/live/cam1?channel=1"
    assert output_stem(url) == "10.0.0.5_554_live_cam1"
    assert "secret" not in redact_url(url) and redact_url(url).startswith("rtsp://***@10.0.0.5:554/")
    assert output_stem("/data/session 1.mp4") == "session 1"


def frames(n: int, delay: float = 0.0, size=(4, 4)):
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield VideoFrame(index=i, time=i / 30, image=np.zeros((*size, 3), np.uint8))


def test_file_batches_are_full_and_live_batches_take_only_waiting_frames():
    stop = threading.Event()
    full = [len(b.frames) for b in iter_batches(frames(10), 4, fill=True, stop_event=stop)]
    assert full == [4, 4, 2]
    live = [len(b.frames) for b in iter_batches(frames(5, delay=0.05), 4, fill=False, stop_event=stop)]
    assert sum(live) == 5 and max(live) < 4  # frames 50 ms apart: no batch waits to be filled


def test_batches_split_where_the_frame_size_changes():
    items = list(frames(3)) + list(frames(2, size=(6, 6)))
    sizes = [[f.image.shape for f in b.frames] for b in iter_batches(items, 8, fill=True,
                                                                      stop_event=threading.Event())]
    assert [len(s) for s in sizes] == [3, 2] and all(len(set(s)) == 1 for s in sizes)


def test_detection_noise_follows_the_engines_validation_and_is_recorded(engine, tmp_path):
    import copy

    plain = track_video(SAMPLES / "sample.mp4", engine, tmp_path / "plain", stop=6, write_video=False,
                        progress=False)
    record = plain.settings["detection_noise"]
    assert record["px"] == 2.0 and "without held-out validation" in record["why_not_validation"]
    assert plain.settings["smoothing"]["measurement_noise_px"] == 2.0

    validated = copy.copy(engine)  # the same prompts, with a validation record as `ppmtrack adapt` writes
    errors = {name: 5.0 + i for i, name in enumerate(engine.names)}
    validated.info = {**engine.info, "validation": {"mode": "leave-one-frame-out", "error_px": 9.0,
                                                    "error_px_per_keypoint": errors}}
    assert engine.info["adaptation"]["support_image_sizes"][0] == [240, 320]  # the sample's frames: scale 1
    summary = track_video(SAMPLES / "sample.mp4", validated, tmp_path / "validated", stop=6, write_video=False,
                          progress=False)
    saved = json.loads(Path(summary.outputs["summary"]).read_text())["settings"]
    assert saved["detection_noise"]["px"] == errors and saved["detection_noise"]["scale"] == 1.0
    assert saved["smoothing"]["measurement_noise_px"] == list(errors.values())
    given = track_video(SAMPLES / "sample.mp4", validated, tmp_path / "given", stop=6, write_video=False,
                        progress=False, detection_noise=7.5)
    assert given.settings["detection_noise"] == {"source": "given", "px": 7.5}


def test_a_bad_detection_noise_is_refused_before_anything_is_written(engine, tmp_path):
    from ppmtrack.engine.errors import UsageError

    for bad in (-2.0, float("nan"), "lots"):
        with pytest.raises(UsageError, match="detection noise must be"):
            track_video(SAMPLES / "sample.mp4", engine, tmp_path / "out", detection_noise=bad, progress=False)
    assert not (tmp_path / "out").exists()
