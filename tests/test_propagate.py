"""Label propagation (pipelines.propagate): suggestions from labelled frames, and the label page's suggest API."""

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"


@pytest.fixture(scope="module")
def matcher(tiny_model):
    from ppmtrack.engine.correspond import CorrespondConfig
    from ppmtrack.engine.correspond_points import PointMatcher

    return PointMatcher(tiny_model, config=CorrespondConfig(views=2))


def test_suggestions_follow_the_truth_near_a_labelled_frame_and_stay_inside_the_frame(matcher, sample_truth):
    from ppmtrack.pipelines.propagate import propose
    from ppmtrack.pipelines.sources import read_frames_at

    frames = read_frames_at(SAMPLE, range(10, 16))
    frames.update(read_frames_at(SAMPLE, [100]))
    truth = {ref.frame: kp for ref, kp in zip(sample_truth.frames, sample_truth.keypoints, strict=True)}
    labelled = {10: truth[10]}
    found = propose(matcher, labelled, [10, 13, 100], frames.__getitem__, near=5)
    assert sorted(found) == [13, 100]  # a labelled frame gets no suggestion
    assert found[13].source == ["flow"] * len(truth[13])  # 3 frames from a label: carried by the flow
    assert np.median(np.linalg.norm(found[13].xy - truth[13], axis=1)) < 3.0
    assert found[100].source == ["features"] * len(truth[100])  # far: correspondence
    for s in found.values():
        assert np.all((s.xy >= 0) & (s.xy <= [319, 239]))
        assert np.all((s.confidence >= 0) & (s.confidence <= 1))
    # with no flow the near frame comes from the correspondence too, and a keypoint never labelled gets nothing
    partial = {10: np.where(np.arange(len(truth[10]))[:, None] == 0, np.nan, truth[10])}
    features = propose(matcher, partial, [13], frames.__getitem__, near=0)[13]
    assert features.source[1] == "features" and np.isnan(features.xy[0]).all() and np.isfinite(features.xy[1:]).all()


def test_the_label_page_suggests_without_saving_until_the_user_accepts(tiny_model, tmp_path):
    pytest.importorskip("starlette", reason="the ui extra is not installed")
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from ppmtrack.pipelines.io.annotation import read_annotation
    from ppmtrack.pipelines.propagate import LabelProposer
    from ppmtrack.pipelines.web.app import create_app
    from ppmtrack.pipelines.web.sessions import LabelSession

    out = tmp_path / "support.json"
    session = LabelSession([SAMPLE], out, ["nose", "tail_tip"])
    assert TestClient(create_app(session)).post("/api/video/0/suggest", json={"frames": [3]}).status_code == 404
    session.proposer = LabelProposer(tiny_model, views=2)
    client = TestClient(create_app(session))
    assert "label at least one frame" in client.post("/api/video/0/suggest", json={"frames": [3]}).json()["error"]
    doc = {"keypoints": ["nose", "tail_tip"], "skeleton": [], "frames": [
        {"video": 0, "frame": 10, "points": {"nose": [154.4, 160.3], "tail_tip": [21.2, 134.4]}}]}
    revision = client.put("/api/labels", json={**doc, "revision": client.get("/api/state").json()["revision"]}
                          ).json()["revision"]
    before = out.read_bytes()
    r = client.post("/api/video/0/suggest", json={"frames": [12, 60, 10]})
    assert r.status_code == 200
    got = r.json()["frames"]
    assert sorted(got) == ["12", "60"]
    assert got["12"]["nose"]["source"] == "flow" and got["60"]["nose"]["source"] == "features"
    for points in got.values():
        assert set(points) == {"nose", "tail_tip"}
        assert all(0 <= p["x"] <= 319 and 0 <= p["y"] <= 239 for p in points.values())
    assert out.read_bytes() == before  # suggestions are not labels
    assert len(read_annotation(out).frames) == 1
    for bad in ({"frames": [500]}, {"frames": []}, {"frames": "12"}, {"frames": [True]}, [1]):
        assert client.post("/api/video/0/suggest", json=bad).status_code == 400
    assert client.post("/api/video/5/suggest", json={"frames": [1]}).status_code == 400
    # accepting is the page saving them as labels, like clicks
    doc["frames"].append({"video": 0, "frame": 60, "points": {n: [p["x"], p["y"]] for n, p in got["60"].items()}})
    assert client.put("/api/labels", json={**doc, "revision": revision}).status_code == 200
    assert [ref.frame for ref in read_annotation(out).frames] == [10, 60]
