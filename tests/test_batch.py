"""Output sets (inputs never written over, unique stems, reruns) and batches of videos in one command."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import av
import pytest
from videogen import write_index_video

from ppmtrack.engine import Engine
from ppmtrack.pipelines.batch import expand_inputs, plan_batch, run_batch
from ppmtrack.pipelines.cli import main
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.outputs import OutputExistsError, assign_stems, engine_identity, input_identity
from ppmtrack.pipelines.track import track_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine(quick_engine_file):
    return Engine.load(quick_engine_file)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def n_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def read_batch(out: Path) -> dict[str, dict]:
    with open(out / "batch_summary.csv", newline="") as f:
        return {Path(row["video"]).name: row for row in csv.DictReader(f)}


def test_output_folder_of_the_input_never_replaces_the_input(engine, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    video = write_index_video(folder / "clip.mp4", 12).path
    before = digest(video)
    summary = track_video(video, engine, folder, progress=False, batch_size=4)
    assert digest(video) == before  # the recording is untouched
    assert summary.status == "complete" and summary.frames_processed == 12
    annotated = folder / "clip.ppmtrack.mp4"
    assert summary.outputs["video"] == str(annotated) and n_frames(annotated) == 12
    assert len(read_tracks_csv(folder / "clip.csv")) == 12
    doc = json.loads((folder / "clip.summary.json").read_text())
    assert doc["input"]["path"] == str(video.resolve())
    # the folder now holds the input and its outputs: as an input folder it still means the one recording
    out = tmp_path / "elsewhere"
    track_video(video, engine, out, progress=False, batch_size=4)
    assert expand_inputs([folder]) == [str(video)]
    with pytest.raises(ValueError, match="no videos"):  # only an annotated video there
        expand_inputs([out])


def test_rerun_refuses_complete_results_and_overwrite_removes_the_whole_old_set(engine, tmp_path):
    video = write_index_video(tmp_path / "cam.mp4", 8).path
    out = tmp_path / "out"
    track_video(video, engine, out, progress=False, write_video=False, output_formats=["csv", "sleap", "nwb"])
    first = {p.name: digest(p) for p in out.iterdir()}
    assert {"cam.csv", "cam.analysis.h5", "cam.nwb", "cam.summary.json"} <= set(first)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        track_video(video, engine, out, progress=False, write_video=False)
    assert {p.name: digest(p) for p in out.iterdir()} == first  # nothing touched
    # a redo with fewer formats and a shorter range leaves no stale .nwb / .analysis.h5 beside the new CSV
    track_video(video, engine, out, progress=False, write_video=False, stop=5, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["cam.csv", "cam.summary.json"]
    assert len(read_tracks_csv(out / "cam.csv")) == 5


def test_an_interrupted_earlier_run_is_redone_without_asking(engine, tmp_path):
    video = write_index_video(tmp_path / "cam.mp4", 8).path
    out = tmp_path / "out"
    track_video(video, engine, out, progress=False, write_video=False)
    doc = json.loads((out / "cam.summary.json").read_text())
    doc["status"] = "interrupted"
    (out / "cam.summary.json").write_text(json.dumps(doc))
    assert track_video(video, engine, out, progress=False, write_video=False).status == "complete"


def test_same_file_name_from_two_folders_or_two_extensions_gets_distinct_stems(engine, tmp_path):
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
    day1 = write_index_video(tmp_path / "day1" / "cam1.mp4", 5).path
    day2 = write_index_video(tmp_path / "day2" / "cam1.mp4", 7).path
    mkv = write_index_video(tmp_path / "day2" / "cam1.mkv", 6).path
    out = tmp_path / "out"
    summaries = [track_video(v, engine, out, progress=False, write_video=False) for v in (day1, day2, mkv)]
    stems = [Path(s.outputs["csv"]).stem for s in summaries]
    assert stems == ["cam1", "day2_cam1", "cam1_mkv"]
    assert [len(read_tracks_csv(out / f"{s}.csv")) for s in stems] == [5, 7, 6]
    # the stems are found again on a rerun, whatever the order of the inputs
    again = assign_stems([mkv, day2, day1], out)
    assert [again[input_identity(v)] for v in (day1, day2, mkv)] == stems


def test_inputs_from_folders_globs_and_list_files(tmp_path):
    videos = [write_index_video(tmp_path / name, 2).path for name in ("a.mp4", "b.avi")]
    (tmp_path / "sub").mkdir()
    deep = write_index_video(tmp_path / "sub" / "c.mp4", 2).path
    (tmp_path / "notes.md").write_text("not a video")
    listing = tmp_path / "videos.txt"
    listing.write_text("# sessions\nsub/c.mp4\n\na.mp4\n")
    assert expand_inputs([tmp_path]) == [str(v) for v in videos]
    assert expand_inputs([tmp_path], recursive=True) == [str(v) for v in videos] + [str(deep)]
    assert expand_inputs([tmp_path], videotypes=".avi") == [str(videos[1])]
    assert expand_inputs([str(tmp_path / "*.mp4"), listing]) == [str(videos[0]), str(deep)]
    with pytest.raises(ValueError, match="no such file"):
        expand_inputs([tmp_path / "missing.mp4"])


def test_batch_with_a_corrupt_video_records_it_and_a_rerun_retries_only_it(quick_engine_file, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "c.mp4"):
        write_index_video(videos / name, 6)
    (videos / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    out = tmp_path / "out"
    args = ["track", str(videos), "--engine", str(quick_engine_file), "-o", str(out), "--no-video", "-q"]
    assert main(args) == 2
    rows = read_batch(out)
    assert [rows[n]["status"] for n in ("a.mp4", "b.mp4", "c.mp4")] == ["complete", "failed", "complete"]
    assert "b.mp4" in rows["b.mp4"]["error"] and rows["a.mp4"]["frames"] == "6"
    doc = json.loads((out / "batch_summary.json").read_text())
    assert doc["counts"]["failed"] == 1 and len(doc["videos"]) == 3
    err = capsys.readouterr().err
    assert "1 of 3 videos failed" in err
    assert "video/s" not in err and "frame/s" not in err  # -q: neither progress bar
    done = {n: (out / f"{n}.csv").stat().st_mtime_ns for n in ("a", "c")}

    assert main(args) == 2  # still broken: retried, the two others skipped
    rows = read_batch(out)
    assert [rows[n]["status"] for n in ("a.mp4", "b.mp4", "c.mp4")] == ["skipped", "failed", "skipped"]
    assert {n: (out / f"{n}.csv").stat().st_mtime_ns for n in ("a", "c")} == done

    write_index_video(videos / "b.mp4", 4)  # repaired
    assert main(args) == 0
    assert read_batch(out)["b.mp4"]["status"] == "complete" and len(read_tracks_csv(out / "b.csv")) == 4


def test_two_workers_share_one_queue_and_match_one_worker(quick_engine_file, engine, tmp_path):
    videos = [write_index_video(tmp_path / f"v{i}.mp4", 5 + i).path for i in range(3)]
    identity = engine_identity(engine, quick_engine_file)
    results = {}
    for label, loaders in (("one", [("cpu#0", lambda: engine)]),
                           ("two", [("cpu#0", lambda: engine), ("cpu#1", lambda: Engine.load(quick_engine_file))])):
        out = tmp_path / label
        items = plan_batch([str(v) for v in videos], out, identity, overwrite=False)
        run_batch(items, out, loaders, track_kwargs={"write_video": False, "engine_path": quick_engine_file,
                                                     "batch_size": 4}, progress=False)
        assert [i.status for i in items] == ["complete"] * 3
        results[label] = {v.stem: (out / f"{v.stem}.csv").read_text() for v in videos}
    assert results["one"] == results["two"]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_devices_all_tracks_on_every_gpu(quick_engine_file, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        write_index_video(videos / f"v{i}.mp4", 6)
    out = tmp_path / "out"
    assert main(["track", str(videos), "--engine", str(quick_engine_file), "-o", str(out), "--no-video", "-q",
                 "--devices", "all"]) == 0
    assert all(row["status"] == "complete" for row in read_batch(out).values())


def test_a_new_session_of_a_camera_never_replaces_the_last_one(tmp_path):
    url = "rtsp://user:secret@10.0.0.5:554/live/cam1"
    assert assign_stems([url], tmp_path)[input_identity(url)] == "10.0.0.5_554_live_cam1"
    earlier = {"status": "interrupted", "input": {"source": input_identity(url), "path": input_identity(url)}}
    (tmp_path / "10.0.0.5_554_live_cam1.summary.json").write_text(json.dumps(earlier))
    stem = assign_stems([url], tmp_path)[input_identity(url)]
    assert stem.startswith("10.0.0.5_554_live_cam1_2") and len(stem) == len("10.0.0.5_554_live_cam1_") + 15
    assert "secret" not in input_identity(url)


def test_the_next_video_is_opened_before_the_current_one_ends(engine, quick_engine_file, tmp_path, monkeypatch):
    from ppmtrack.pipelines import batch

    videos = [str(write_index_video(tmp_path / f"v{i}.mp4", 6).path) for i in range(3)]
    opened, ended = {}, {}
    real_open = batch.open_source

    def spy(spec, **kwargs):
        opened[Path(spec).name] = len(ended)  # how many videos had ended when this one was opened
        return real_open(spec, **kwargs)

    monkeypatch.setattr(batch, "open_source", spy)
    items = plan_batch(videos, tmp_path / "out", None, overwrite=False)
    run_batch(items, tmp_path / "out", [("cpu", lambda: engine)], progress=False,
              track_kwargs={"write_video": False, "engine_path": quick_engine_file},
              on_done=lambda item: ended.setdefault(item.stem, len(ended)))
    assert [i.status for i in items] == ["complete"] * 3
    assert opened == {"v0.mp4": 0, "v1.mp4": 0, "v2.mp4": 1}  # v1 opened while v0 ran, v2 while v1 ran


def test_outputs_returned_by_a_worker_are_installed_with_their_paths_rewritten(engine, tmp_path):
    """What the driver does for a Ray worker that cannot see the output folder: files come back as bytes."""
    from ppmtrack.pipelines.cluster import install_outputs

    folder = tmp_path / "d"
    folder.mkdir()
    video = write_index_video(folder / "clip.mp4", 6).path
    before = digest(video)
    work = tmp_path / "worker"
    summary = track_video(video, engine, work, stem="clip", progress=False, output_formats=["csv", "sleap"])
    files = {p.name: p.read_bytes() for p in work.iterdir()}
    doc = install_outputs(files, summary.to_dict(), video, folder, "clip", write_video=True)
    # installed beside the input: the annotated video must not replace it
    assert doc["outputs"]["video"] == str(folder / "clip.ppmtrack.mp4") and digest(video) == before
    assert (folder / "clip.ppmtrack.mp4").read_bytes() == files["clip.mp4"]
    assert doc["outputs"]["csv"] == str(folder / "clip.csv") and doc["outputs"]["formats"] == [
        str(folder / "clip.analysis.h5")]
    assert json.loads((folder / "clip.summary.json").read_text())["outputs"] == doc["outputs"]
    assert sorted(p.name for p in folder.iterdir()) == ["clip.analysis.h5", "clip.csv", "clip.mp4",
                                                         "clip.ppmtrack.mp4", "clip.summary.json"]
