"""The browser app's server side (without a browser): sessions, frame access, path and token checks, plots."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from videogen import decode_index, write_index_video

from ppmtrack.pipelines.frame_selection import propose_frames
from ppmtrack.pipelines.io.annotation import read_annotation
from ppmtrack.pipelines.io.csv import write_tracks_csv
from ppmtrack.pipelines.labels import LabelsError
from ppmtrack.pipelines.video_frames import VideoFrames
from ppmtrack.tracker.track import Tracks

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"


def write_results(folder: Path, n_frames: int = 20, names=("nose", "neck", "tail")) -> Tracks:
    """A results folder like 'ppmtrack track' writes: <stem>.csv and <stem>.summary.json for the sample video.

    Keypoint k sits at (60 + 60 k + 3 t, 60 + 50 k + 2 t) on frame t; keypoint 2 is not visible on frames 5–7.
    """
    k = len(names)
    t = np.arange(n_frames)
    xy = np.stack([np.stack([60 + 60 * j + 3 * t, 60 + 50 * j + 2 * t], axis=1) for j in range(k)], axis=1)
    visible = np.ones((n_frames, k), dtype=bool)
    visible[5:8, 2] = False
    confidence = np.full((n_frames, k), 0.9)
    confidence[11, 1] = 0.1
    tracks = Tracks(names=list(names), frame=t.astype(np.int64), time=t / 30.0, raw_xy=xy.astype(float),
                    confidence=confidence, xy=xy.astype(float), visible=visible)
    folder.mkdir(parents=True, exist_ok=True)
    write_tracks_csv(tracks, folder / "sample.csv")
    (folder / "sample.summary.json").write_text(json.dumps(
        {"input": {"source": str(SAMPLE), "live": False}, "engine": {"model": "tiny"}}))
    return tracks


def test_frames_are_exact_in_any_order_of_requests(tmp_path):
    video = write_index_video(tmp_path / "index.mp4", 60, gop=12, bframes=2).path
    frames = VideoFrames(video)
    order = list(range(60))
    random.Random(0).shuffle(order)
    for i in order + [3, 4, 5, 40, 41, 59] + list(range(60)) + list(range(0, 60, 7)):
        assert decode_index(frames.rgb(i)) == i
    with pytest.raises(IndexError):
        frames.rgb(60)
    assert frames.jpeg(7)[:2] == b"\xff\xd8"
    frames.close()


class ThreeScenes:
    """Frames 0–29 dark, 30–59 mid grey with a bar, 60–89 bright: k-means with 3 clusters finds one in each."""

    n_frames = 90

    def rgb(self, i):
        image = np.full((48, 64, 3), (20, 128, 235)[i // 30], dtype=np.uint8)
        if i // 30 == 1:
            image[:, :10] = 255
        return image


def test_k_means_proposes_one_frame_per_distinct_scene():
    frames = propose_frames(ThreeScenes(), n=3)
    assert sorted(f // 30 for f in frames) == [0, 1, 2]
    assert propose_frames(ThreeScenes(), n=3) == frames  # same proposals every time


def test_k_means_proposals_on_the_sample_are_spread():
    frames = propose_frames(VideoFrames(SAMPLE), n=8)
    assert len(frames) == 8 and frames == sorted(set(frames))
    assert frames[0] < 50 and frames[-1] > 150


def test_label_session_saves_every_change_and_reopens(tmp_path):
    from ppmtrack.pipelines.web.sessions import LabelSession

    out = tmp_path / "labels" / "support.json"
    session = LabelSession([SAMPLE], out, ["nose", "neck", "tail"], [("nose", "neck")])
    doc = session.document()
    assert doc["keypoints"] == ["nose", "neck", "tail"] and doc["videos"][0]["n_frames"] == 200
    session.update({"keypoints": ["nose", "neck", "tail"], "skeleton": [["nose", "neck"]], "frames": [
        {"video": 0, "frame": 40, "points": {"nose": [10.5, 20.25], "neck": None, "tail": [300, 200]}},
        {"video": 0, "frame": 3, "points": {"nose": [1, 2]}},
    ]})
    labels = read_annotation(out)
    assert [r.frame for r in labels.frames] == [3, 40]
    assert labels.frames[0].video.resolve() == SAMPLE.resolve()
    np.testing.assert_allclose(labels.keypoints[1], [[10.5, 20.25], [np.nan, np.nan], [300, 200]])
    assert labels.skeleton == [("nose", "neck")]
    again = LabelSession([], out).document()
    assert again["frames"] == session.document()["frames"] and again["keypoints"] == ["nose", "neck", "tail"]
    with pytest.raises(LabelsError, match="has keypoints"):
        LabelSession([SAMPLE], out, ["a", "b"])


@pytest.mark.parametrize("frames, message", [
    ([{"video": 0, "frame": 1, "points": {"ear": [1, 1]}}], "unknown keypoint"),
    ([{"video": 0, "frame": 1, "points": {"nose": [320, 10]}}], "outside the 320x240 frame"),
    ([{"video": 0, "frame": 200, "points": {}}], "no frame 200"),
    ([{"video": 1, "frame": 0, "points": {}}], "no video 1"),
])
def test_label_session_refuses_bad_points_and_keeps_the_file(tmp_path, frames, message):
    from ppmtrack.pipelines.web.sessions import LabelSession, WebInputError

    out = tmp_path / "support.json"
    session = LabelSession([SAMPLE], out, ["nose"])
    session.update({"keypoints": ["nose"], "frames": [{"video": 0, "frame": 5, "points": {"nose": [5, 6]}}]})
    before = out.read_text()
    with pytest.raises(WebInputError, match=message):
        session.update({"keypoints": ["nose"], "frames": frames})
    assert out.read_text() == before


def test_image_frames_of_an_existing_file_are_kept(tmp_path):
    import cv2

    from ppmtrack.pipelines.web.sessions import LabelSession

    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((30, 40, 3), np.uint8))
    out = tmp_path / "support.json"
    out.write_text(json.dumps({"keypoints": ["a", "b"], "frames": [{"image": "img.png", "points": {"a": [3, 4]}}]}))
    session = LabelSession([SAMPLE], out)
    session.update({"keypoints": ["b", "a"], "frames": [{"video": 0, "frame": 0, "points": {"b": [9, 9]}}]})
    labels = read_annotation(out)
    assert labels.names == ["b", "a"] and labels.frames[1].image.name == "img.png"
    np.testing.assert_allclose(labels.keypoints[1], [[np.nan, np.nan], [3, 4]])


def test_review_of_a_long_run_sends_an_overview_and_the_tracks_by_page(tmp_path):
    pytest.importorskip("starlette", reason="the ui extra is not installed")
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from ppmtrack.pipelines.web.app import create_app
    from ppmtrack.pipelines.web.sessions import MAX_PAGE_FRAMES, OVERVIEW_BINS, ReviewSession

    n = 30 * 1200  # 20 minutes at 30 fps keeps the test short; what the page gets does not grow with the run
    tracks = write_results(tmp_path / "run", n_frames=n)
    client = TestClient(create_app(ReviewSession(tmp_path / "run")))
    response = client.get("/api/state")
    doc = response.json()
    assert len(response.content) < 300_000  # not the 36 000 frames × 3 keypoints of the CSV
    assert not {"xy", "confidence", "visible", "frame"} & set(doc)
    assert doc["tracked"] == {"count": n, "first": 0, "last": n - 1, "page_limit": MAX_PAGE_FRAMES}
    overview = doc["overview"]
    assert len(overview["frame"]) <= OVERVIEW_BINS and overview["frame"][0] == 0
    width = overview["width"]
    np.testing.assert_allclose(overview["x"][1], tracks.xy[width:2 * width, :, 0].mean(axis=0), atol=0.05)
    assert overview["confidence"][0] == [0.9, 0.1, 0.9]  # frame 11 is in the first span: its lowest value
    page = client.get("/api/tracks?start=30000&stop=31000").json()
    assert page["frame"] == list(range(30000, 31000))
    np.testing.assert_allclose(np.array(page["xy"], float).reshape(-1, 3, 2), tracks.xy[30000:31000])
    assert client.get("/api/tracks?start=5&stop=8").json()["visible"] == [[1, 1, 0]] * 3
    assert client.get(f"/api/tracks?start=0&stop={MAX_PAGE_FRAMES + 1}").status_code == 400
    assert client.get("/api/tracks?start=x&stop=8").status_code == 400
    assert client.get(f"/api/tracks?start={n}&stop={n + 10}").json()["frame"] == []


def test_review_session_finds_weak_frames_and_gaps_and_extends_the_support_file(tmp_path):
    from ppmtrack.pipelines.web.sessions import ReviewSession

    write_results(tmp_path / "run")
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"keypoints": ["nose", "neck", "tail"], "skeleton": [["nose", "neck"]], "frames": [
        {"video": str(SAMPLE), "frame": 50, "points": {"nose": [1, 1]}}]}))
    session = ReviewSession(tmp_path / "run", support=base)
    doc = session.document()
    assert doc["lowest"][0] == {"frame": 11, "confidence": 0.1}
    assert doc["gaps"] == [{"keypoint": "tail", "start": 5, "end": 7}]
    assert session.tracks_page(4, 5)["xy"][0][:2] == [72.0, 68.0] and doc["support_frames"] == [50]
    assert "ppmtrack adapt" in doc["adapt_command"] and "--model tiny" in doc["adapt_command"]
    session.add_support_frame({"frame": 12, "points": {"nose": [100, 90], "neck": None, "tail": [5, 6]}})
    session.add_support_frame({"frame": 12, "points": {"nose": [101, 91], "neck": None, "tail": [5, 6]}})
    labels = read_annotation(tmp_path / "run" / "sample.support.json")
    assert [r.frame for r in labels.frames] == [50, 12]
    np.testing.assert_allclose(labels.keypoints[1, 0], [101, 91])
    assert json.loads(base.read_text())["frames"][0]["frame"] == 50 and len(json.loads(base.read_text())["frames"]) == 1
    labels.to_support()  # what 'ppmtrack adapt' reads


def test_review_needs_the_video_and_matching_keypoints(tmp_path):
    from ppmtrack.pipelines.web.sessions import ReviewSession

    write_results(tmp_path / "run")
    (tmp_path / "run" / "sample.summary.json").write_text(json.dumps({"input": {"source": "gone.mp4"}}))
    with pytest.raises(LabelsError, match="--video"):
        ReviewSession(tmp_path / "run")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"keypoints": ["ear"], "frames": [{"image": "x.png", "points": {}}]}))
    with pytest.raises(LabelsError, match="differ from the tracked ones"):
        ReviewSession(tmp_path / "run", video=SAMPLE, support=other)


@pytest.fixture
def review_client(tmp_path):
    pytest.importorskip("starlette", reason="the ui extra is not installed")
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from ppmtrack.pipelines.web.app import create_app
    from ppmtrack.pipelines.web.sessions import ReviewSession

    write_results(tmp_path / "run")
    (tmp_path / "secret.txt").write_text("not to be served")

    def client(token=None):
        return TestClient(create_app(ReviewSession(tmp_path / "run"), token=token))

    return client


def test_only_session_files_are_served_and_traversal_is_refused(review_client):
    client = review_client()
    assert client.get("/results/sample.csv").status_code == 200
    assert client.get("/api/video/0/frame/3.jpg").headers["content-type"] == "image/jpeg"
    assert client.get("/static/review.html").status_code == 200
    for path in ("/results/..%2Fsecret.txt", "/results/%2E%2E/secret.txt", "/results/..%2F..%2F..%2Fetc%2Fpasswd",
                 "/results//etc/passwd", "/static/..%2Fapp.py", "/static/%2E%2E/sessions.py",
                 "/api/video/1/frame/0.jpg", "/api/video/0/frame/200.jpg", "/api/video/0/frame/-1.jpg"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "not to be served" not in response.text and "import" not in response.text


def test_a_token_is_required_when_one_is_set(review_client):
    from ppmtrack.pipelines.web.app import is_loopback

    client = review_client(token="s3cret")
    assert client.get("/api/state").status_code == 403
    assert client.get("/api/state?token=wrong").status_code == 403
    assert client.get("/api/state?token=s3cret").status_code == 200
    assert client.get("/api/video/0/frame/0.jpg").status_code == 200  # the cookie set by the first visit
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_changes_need_json_and_a_loopback_host_name(review_client, tmp_path):
    from starlette.testclient import TestClient

    from ppmtrack.pipelines.web.app import LOOPBACK_HOSTS, create_app
    from ppmtrack.pipelines.web.sessions import ReviewSession

    client = review_client()
    body = '{"frame": 3, "points": {"nose": [1, 2]}}'
    # what a form or fetch of another web site can send without a CORS preflight
    response = client.post("/api/support", content=body, headers={"Content-Type": "text/plain"})
    assert response.status_code == 415 and not (tmp_path / "run" / "sample.support.json").exists()
    assert client.post("/api/support", content=body, headers={"Content-Type": "application/json"}).status_code == 200
    app = create_app(ReviewSession(tmp_path / "run"), allowed_hosts=LOOPBACK_HOSTS)
    assert TestClient(app, base_url="http://127.0.0.1:8765").get("/api/state").status_code == 200
    assert TestClient(app, base_url="http://localhost:8765").get("/api/state").status_code == 200
    assert TestClient(app, base_url="http://rebound.example.com:8765").get("/api/state").status_code == 400


def test_bad_requests_get_a_message_not_a_crash(review_client):
    client = review_client()
    response = client.post("/api/support", json={"frame": 3, "points": {"ear": [1, 2]}})
    assert response.status_code == 400 and "unknown keypoint" in response.json()["error"]


def test_dlc_labelled_data_round_trip(tmp_path):
    from ppmtrack.pipelines.io.dlc import read_dlc, read_dlc_config, write_dlc_labels

    labels = read_annotation(ROOT / "samples" / "support.json")
    written = write_dlc_labels(labels, tmp_path / "project", "Alice")
    assert written == [tmp_path / "project" / "labeled-data" / "sample" / "CollectedData_Alice.csv"]
    back = read_dlc(written[0])
    np.testing.assert_allclose(back.keypoints, labels.keypoints, atol=1e-3)
    assert back.names == labels.names and back.frames[0].image.name == "img00010.png"
    assert back.to_support().images[0].shape == (240, 320, 3)
    config = tmp_path / "config.yaml"
    config.write_text("bodyparts:\n- snout\n- tail\nskeleton:\n- [snout, tail]\n- [snout, ear]\n")
    assert read_dlc_config(config) == (["snout", "tail"], [("snout", "tail")])


def test_plots_are_written_and_speed_is_in_pixels_per_second(tmp_path):
    import cv2

    from ppmtrack.pipelines.plots import speeds, write_plots

    tracks = write_results(tmp_path)
    values, unit = speeds(tracks)
    assert unit == "px/s" and np.isnan(values[0]).all()
    np.testing.assert_allclose(values[1:], np.hypot(3, 2) * 30)
    written = write_plots(tmp_path / "sample.csv", out_dir=tmp_path / "plots")
    assert [p.name for p in written] == ["sample.trajectories.png", "sample.confidence.png", "sample.speed.png"]
    trajectories = cv2.imread(str(written[0]))
    assert trajectories is not None and trajectories.shape[1] == 800 and trajectories.std() > 20
    assert all(cv2.imread(str(p)) is not None for p in written)


def test_plot_command(tmp_path, capsys):
    from ppmtrack.pipelines.cli import main

    write_results(tmp_path)
    assert main(["plot", str(tmp_path / "sample.csv")]) == 0
    assert "sample.speed.png" in capsys.readouterr().out and (tmp_path / "sample.speed.png").is_file()
    assert main(["plot", str(tmp_path / "missing.csv")]) == 2
    assert "no such tracks CSV" in capsys.readouterr().err


@pytest.mark.usefixtures("one_torch_thread")
def test_track_with_plots_writes_them_and_the_summary_lists_them(tmp_path):
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.pipelines.track import track_video

    support = read_annotation(ROOT / "samples" / "support.json").to_support()
    engine = Engine.adapt(support, "tiny", AdaptConfig(steps=1, fg_steps=1, views_per_frame=1, resolution=64))
    summary = track_video(SAMPLE, engine, tmp_path, stop=4, write_video=False, progress=False, plots=True)
    plots = [Path(p) for p in summary.outputs["plots"]]
    assert [p.name for p in plots] == ["sample.trajectories.png", "sample.confidence.png", "sample.speed.png"]
    assert all(p.stat().st_size > 1000 for p in plots)
    assert json.loads((tmp_path / "sample.summary.json").read_text())["outputs"]["plots"] == summary.outputs["plots"]


@pytest.mark.parametrize("args, message", [
    (["label", "missing.mp4", "-o", "{tmp}/s.json", "--keypoints", "a"], "no such video file"),
    (["label", str(SAMPLE), "-o", "{tmp}/s.json", "--keypoints", "a,b", "--skeleton", "a-c"], "--skeleton edge"),
    (["label", str(SAMPLE), "-o", "{tmp}/s.json", "--from", "{tmp}/none.yaml"], "no such DeepLabCut config"),
    (["review", "{tmp}/nothing"], "no such results folder"),
])
def test_label_and_review_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    pytest.importorskip("starlette", reason="the ui extra is not installed")
    from ppmtrack.pipelines.cli import main

    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize("command", ["label", "review", "plot"])
def test_help_of_the_new_commands_shows_usage_and_examples(command, capsys):
    from ppmtrack.pipelines.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ppmtrack {command}") and "example" in out


def test_label_page_api_saves_and_exports_deeplabcut(tmp_path):
    pytest.importorskip("starlette", reason="the ui extra is not installed")
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from ppmtrack.pipelines.io.dlc import read_dlc
    from ppmtrack.pipelines.web.app import create_app
    from ppmtrack.pipelines.web.sessions import LabelSession

    out = tmp_path / "support.json"
    client = TestClient(create_app(LabelSession([SAMPLE], out, ["nose", "tail"])))
    assert client.post("/api/export-dlc", json={"scorer": "Alice"}).json()["error"] == "label a frame before exporting"
    doc = {"keypoints": ["nose", "tail"], "skeleton": [], "frames": [
        {"video": 0, "frame": 7, "points": {"nose": [12.5, 30], "tail": None}}]}
    revision = client.get("/api/state").json()["revision"]
    saved = client.put("/api/labels", json={**doc, "revision": revision}).json()
    assert saved == {"saved": str(out), "frames": 1, "revision": saved["revision"]} and saved["revision"] != revision
    assert client.get("/api/state").json()["frames"] == doc["frames"]
    assert client.post("/api/export-dlc", json={"scorer": "../x"}).status_code == 400
    written = client.post("/api/export-dlc", json={"scorer": "Alice"}).json()["written"]
    assert written == [str(tmp_path / "support_dlc" / "labeled-data" / "sample" / "CollectedData_Alice.csv")]
    np.testing.assert_allclose(read_dlc(written[0]).keypoints, [[[12.5, 30], [np.nan, np.nan]]])
    proposals = client.get("/api/video/0/proposals?n=5").json()["frames"]
    assert len(proposals) == 5 and all(0 <= f < 200 for f in proposals)
    assert client.get("/api/video/3/proposals").status_code == 404


def test_review_runs_adapt_in_the_background_and_reports_its_outcome(tmp_path):
    import shutil
    import time

    from ppmtrack.pipelines.web.sessions import ReviewSession, WebInputError

    write_results(tmp_path / "run")
    video = shutil.copy(SAMPLE, tmp_path / "clip.mp4")
    session = ReviewSession(tmp_path / "run", video=Path(video))
    with pytest.raises(WebInputError, match="first"):
        session.start_adapt()
    session.add_support_frame({"frame": 3, "points": {"nose": [10, 10]}})
    assert session.adapt_argv()[3] == str(tmp_path / "run" / "sample.refined.engine")
    (tmp_path / "run" / "sample.refined.engine").write_text("an earlier engine")
    assert session.adapt_argv()[3] == str(tmp_path / "run" / "sample.refined-2.engine")  # never overwritten
    Path(video).unlink()  # adapt fails at once reading the support frames: a quick, real run of the command
    status = session.start_adapt()
    assert status["running"] or status["returncode"] is not None
    deadline = time.monotonic() + 120
    while session.adapt_status()["running"] and time.monotonic() < deadline:
        time.sleep(0.5)
    status = session.adapt_status()
    assert status["returncode"] == 2 and "clip.mp4" in status["log"] and "error" in status["log"]


SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared real-animal clips are not here")
def test_keypoints_come_from_a_dlc_config_and_from_a_sleap_file_of_predictions():
    pytest.importorskip("sleap_io", reason="the formats extra is not installed")
    from ppmtrack.pipelines.web.sessions import keypoints_from

    names, skeleton, _ = keypoints_from(SHARED_DATA / "dlc_reaching" / "config.yaml")
    assert names == ["Hand", "Finger1", "Tongue", "Joystick1", "Joystick2"] and ("Hand", "Finger1") in skeleton
    names, skeleton, _ = keypoints_from(SHARED_DATA / "sleap_centered_pair" / "centered_pair_predictions.slp")
    assert len(names) == 24 and names[:2] == ["head", "neck"] and ("neck", "head") in skeleton


def _label_client(tmp_path):
    pytest.importorskip("starlette", reason="the ui extra is not installed")
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from ppmtrack.pipelines.web.app import create_app
    from ppmtrack.pipelines.web.sessions import LabelSession

    out = tmp_path / "support.json"
    return TestClient(create_app(LabelSession([SAMPLE], out, ["nose", "tail"]))), out


def test_a_stale_page_cannot_overwrite_labels_saved_from_another_tab(tmp_path):
    client, out = _label_client(tmp_path)
    tab_a, tab_b = client.get("/api/state").json(), client.get("/api/state").json()
    frame = {"video": 0, "frame": 7, "points": {"nose": [12.5, 30], "tail": None}}
    doc_a = {"keypoints": ["nose", "tail"], "skeleton": [], "frames": [frame], "revision": tab_a["revision"]}
    assert client.put("/api/labels", json=doc_a).status_code == 200
    saved = out.read_text()
    other = {"video": 0, "frame": 9, "points": {"nose": [1, 2], "tail": None}}
    doc_b = {"keypoints": ["nose", "tail"], "skeleton": [], "frames": [other], "revision": tab_b["revision"]}
    response = client.put("/api/labels", json=doc_b)  # tab B never saw frame 7: refused, frame 7 kept
    assert response.status_code == 409 and response.json()["conflict"] and "Reload the page" in response.json()["error"]
    assert out.read_text() == saved
    response = client.put("/api/labels", json={k: v for k, v in doc_b.items() if k != "revision"})
    assert response.status_code == 428 and out.read_text() == saved
    fresh = client.get("/api/state").json()  # after a reload, tab B saves both frames
    doc_b.update(frames=fresh["frames"] + [other], revision=fresh["revision"])
    saved = client.put("/api/labels", json=doc_b).json()
    assert saved["frames"] == 2
    out.write_text(out.read_text().replace("12.5", "13.5"))  # another program changed the file
    doc_b.update(revision=saved["revision"])
    assert client.put("/api/labels", json=doc_b).status_code == 409 and "13.5" in out.read_text()


def test_bodies_nesting_types_and_odd_paths_get_4xx_not_500(tmp_path, review_client):
    from ppmtrack.pipelines.web.app import MAX_BODY_BYTES

    client, out = _label_client(tmp_path)
    big = b'{"keypoints": ["nose"], "pad": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    headers = {"Content-Type": "application/json"}
    assert client.put("/api/labels", content=big, headers=headers).status_code == 413

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 2):
            yield b" " * (1 << 20)

    assert client.put("/api/labels", content=chunks(), headers=headers).status_code == 413
    nested = "[" * 100_000 + "]" * 100_000
    for path, method in (("/api/labels", client.put), ("/api/export-dlc", client.post)):
        response = method(path, content=nested, headers=headers)
        assert response.status_code == 400 and "nested too deeply" in response.json()["error"], path
    revision = client.get("/api/state").json()["revision"]
    for frame in ({"video": 0, "frame": True}, {"video": False, "frame": 3},
                  {"video": 0, "frame": 3, "points": {"nose": [True, 2]}}):
        doc = {"keypoints": ["nose", "tail"], "frames": [{"points": {}, **frame}], "revision": revision}
        assert client.put("/api/labels", json=doc).status_code == 400, frame
    assert not out.exists()
    review = review_client()
    assert review.post("/api/support", json={"frame": True, "points": {"nose": [1, 2]}}).status_code == 400
    assert review.get("/results/%00").status_code == 400
    assert review.get("/results/a%00b.csv").status_code == 400
    assert review.post("/api/support", content=nested, headers=headers).status_code == 400


def test_review_output_equal_to_the_support_file_is_refused(tmp_path):
    from ppmtrack.pipelines.web.sessions import ReviewSession

    write_results(tmp_path / "run")
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"keypoints": ["nose", "neck", "tail"], "frames": [
        {"video": str(SAMPLE), "frame": 50, "points": {"nose": [1, 1]}}]}))
    before = base.read_bytes()
    with pytest.raises(LabelsError, match="-o names the --support file, which review never writes"):
        ReviewSession(tmp_path / "run", support=base, output=tmp_path / "." / "base.json")
    assert base.read_bytes() == before
