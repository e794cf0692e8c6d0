"""The product on the bundled sample: the default-adapted tiny engine tracks the whole video and scores above
chance by a wide margin; the annotated video keeps the input's frame count and size."""

import json
from pathlib import Path

import av
import numpy as np

from ppmtrack.pipelines.evaluate import evaluate, format_report
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.track import track_video
from ppmtrack.tracker import Tracks

SAMPLES = Path(__file__).resolve().parents[1] / "samples"

# The tracker must beat, by a clear margin, a baseline that knows more than it does: every keypoint put at the
# true centre of the animal's labelled keypoints in every frame (an oracle "body centre" tracker; on this sample
# PCK@0.1 0.08, PCK@0.2 0.21). Chance is lower still (a 0.1·bbox disc is ~0.4 % of the frame).
MARGIN_OVER_CENTRE = 0.1


def centre_baseline(truth) -> Tracks:
    """Tracks that put every keypoint at the mean of the frame's true keypoints."""
    frames = np.array([f.frame for f in truth.frames])
    centre = np.nanmean(truth.keypoints, axis=1, keepdims=True).repeat(len(truth.names), axis=1)
    ones = np.ones(centre.shape[:2])
    return Tracks(names=truth.names, frame=frames, time=frames / 30.0, raw_xy=centre, confidence=ones, xy=centre,
                  visible=ones.astype(bool))


def test_track_and_eval_sample(adapted_engine, sample_truth, tmp_path):
    summary = track_video(SAMPLES / "sample.mp4", adapted_engine, tmp_path, batch_size=8, progress=False)
    doc = json.loads((tmp_path / "sample.summary.json").read_text())
    assert doc["status"] == "complete", doc
    tracks = read_tracks_csv(tmp_path / "sample.csv")
    assert len(tracks) == 200 and tracks.names == adapted_engine.names
    assert np.array_equal(tracks.frame, np.arange(200))
    result = evaluate(tracks, sample_truth)
    report = format_report(result)
    print(report)
    assert "PCK@0.1" in report
    baseline = evaluate(centre_baseline(sample_truth), sample_truth)
    for alpha in (0.1, 0.2):
        assert result.pck[alpha] >= baseline.pck[alpha] + MARGIN_OVER_CENTRE, (alpha, baseline.pck, report)
    assert result.fraction_tracked == 1.0
    with av.open(str(tmp_path / "sample.mp4")) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        assert (s.codec_context.width, s.codec_context.height) == (320, 240)
    assert n == 200
    assert summary.status == "complete" and summary.frames_processed == 200
