"""A batch on a Ray cluster started by the test on 127.0.0.1 (2 CPUs): same outputs as locally, and complete
exactly once when a worker process is killed mid-video."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from videogen import write_index_video

from ppmtrack.engine import Engine
from ppmtrack.pipelines.batch import plan_batch, run_batch
from ppmtrack.pipelines.cli import main
from ppmtrack.pipelines.io.csv import read_tracks_csv
from ppmtrack.pipelines.outputs import engine_file_identity

ray = pytest.importorskip("ray", reason="Ray is the 'cluster' extra: pip install 'ppmtrack[cluster]'")
psutil = pytest.importorskip("psutil")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
TRACK = {"write_video": False, "batch_size": 4}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    return [str(write_index_video(folder / f"v{i}.mp4", 16 + 4 * i).path) for i in range(3)]


def read_batch(out: Path) -> list[dict]:
    with open(out / "batch_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def ray_batch(videos, out, engine_file, **kwargs):
    from ppmtrack.pipelines.cluster import run_batch_ray

    items = plan_batch(videos, out, engine_file_identity(engine_file), overwrite=False)
    return run_batch_ray(items, out, engine_file, "local", track_kwargs=TRACK, progress=False, **kwargs)


def test_ray_batch_writes_what_a_local_batch_writes(local_ray, videos, quick_engine_file, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    command = ["track", str(Path(videos[0]).parent), str(broken), "--engine", str(quick_engine_file), "-o",
               str(tmp_path / "ray"), "--no-video", "-q", "--batch-size", "4", "--ray", "local",
               "--ray-workers", "2"]
    assert main(command) == 2  # joins the cluster this test started; one video failed
    rows = read_batch(tmp_path / "ray")
    assert [r["status"] for r in rows] == ["complete"] * 3 + ["failed"]
    assert "broken.mp4" in rows[3]["error"]
    assert all(r["worker"].startswith("ray pid") for r in rows[:3])

    engine = Engine.load(quick_engine_file)
    local = plan_batch(videos, tmp_path / "local", engine_file_identity(quick_engine_file), overwrite=False)
    run_batch(local, tmp_path / "local", [("cpu", lambda: engine)],
              track_kwargs={**TRACK, "engine_path": quick_engine_file}, progress=False)
    for i in range(3):
        assert (tmp_path / "ray" / f"v{i}.csv").read_text() == (tmp_path / "local" / f"v{i}.csv").read_text()
    assert sorted(p.name for p in (tmp_path / "ray").iterdir() if not p.name.startswith("batch_")) == sorted(
        p.name for p in (tmp_path / "local").iterdir())
    # resume as locally: everything complete is skipped
    assert main(command) == 2
    assert [r["status"] for r in read_batch(tmp_path / "ray")] == ["skipped"] * 3 + ["failed"]


def test_killed_ray_worker_still_ends_with_every_video_complete_once(local_ray, videos, quick_engine_file,
                                                                    tmp_path):
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "TrackActor.track" in " ".join(proc.info["cmdline"] or []):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = tmp_path / "out"
    items = ray_batch(videos, out, quick_engine_file, workers=2)
    thread.join(5)
    assert killed, "no tracking worker was seen to kill"
    assert [i.status for i in items] == ["complete"] * 3, [i.error for i in items]
    assert [i.frames for i in items] == [16, 20, 24]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"v{i}{suffix}" for i in range(3) for suffix in (".csv", ".summary.json"))
    for i in range(3):
        assert read_tracks_csv(out / f"v{i}.csv").frame.tolist() == list(range(16 + 4 * i))
