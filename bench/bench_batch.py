"""Lab-scale benchmark: many short videos in one command, a local Ray cluster, several live streams at once.

    python bench/bench_batch.py                       # CPU, tiny preset, all three parts
    python bench/bench_batch.py --parts batch,ray     # skip the live part (needs the Perl RTSP relay)

1. videos per minute for ``--videos`` short videos: one ``ppmtrack track FOLDER`` (engine loaded once) vs one
   ``ppmtrack track VIDEO`` process per video (start-up paid each time); both as real subprocesses.
2. Ray (``--ray local``, a cluster of this machine): 1 actor vs 2 actors, actor start-up included.
3. live: 1, 2 and 4 RTSP streams (tests/rtsp_server.py relays, 25 fps each) tracked at once through one engine
   for ``--live-seconds``: per-stream frames/s, drops and p50/p95 latency (frame decoded → row written).

The engine has random prompts on the tiny preset at ``--resolution`` (the cost does not depend on the prompt
values). The machine's load average is printed before and after each part: on a shared machine it moves the
numbers a lot.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference import build_model, machine_line, make_engine, print_table  # noqa: E402
from videogen import write_index_video  # noqa: E402


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def ppmtrack(*args: str) -> float:
    """Run the ``ppmtrack`` command; return its wall time in seconds (raise if it fails)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ppmtrack.pipelines.cli", "track", *args], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return time.perf_counter() - t0


def bench_batch(engine_file: Path, videos: list[Path], tmp: Path, batch_size: int) -> list[list]:
    common = ["--engine", str(engine_file), "--no-video", "-q", "--batch-size", str(batch_size)]
    before = load()
    batch_s = ppmtrack(str(videos[0].parent), "-o", str(tmp / "batch"), *common)
    singles_s = sum(ppmtrack(str(v), "-o", str(tmp / "single"), *common) for v in videos)
    n = len(videos)
    return [["one batch command", n, batch_s, 60 * n / batch_s, f"{before} → {load()}"],
            [f"{n} single commands", n, singles_s, 60 * n / singles_s, f"{before} → {load()}"]]


def bench_ray(engine_file: Path, videos: list[Path], tmp: Path, batch_size: int) -> list[list]:
    import ray

    from ppmtrack.pipelines.batch import plan_batch
    from ppmtrack.pipelines.cluster import run_batch_ray
    from ppmtrack.pipelines.outputs import engine_file_identity

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    rows = []
    try:
        for workers in (1, 2):
            before = load()
            out = tmp / f"ray{workers}"
            items = plan_batch([str(v) for v in videos], out, engine_file_identity(engine_file), False)
            t0 = time.perf_counter()
            run_batch_ray(items, out, engine_file, "local", workers=workers, progress=False,
                          track_kwargs={"write_video": False, "batch_size": batch_size})
            seconds = time.perf_counter() - t0
            done = sum(i.status == "complete" for i in items)
            rows.append([f"Ray local, {workers} actor(s)", done, seconds, 60 * done / seconds,
                         f"{before} → {load()}"])
    finally:
        ray.shutdown()
    return rows


def wait_until_served(url: str, options: dict, timeout: float = 20.0) -> None:
    """On a loaded machine the publisher's ANNOUNCE may reach the relay seconds after it starts."""
    from ppmtrack.pipelines.sources import SourceError, open_source

    deadline = time.monotonic() + timeout
    while True:
        try:
            open_source(url, ffmpeg_options=options).close()
            return
        except SourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def bench_live(engine, tmp: Path, seconds: float, batch_size: int) -> list[list]:
    from rtsp_server import UDP_OPTIONS, RtspRelay, server_installed

    from ppmtrack.pipelines.multistream import track_streams

    if not server_installed():
        print("live part skipped: the Perl RTSP relay is not installed (.ci/install-rtsp.sh)", file=sys.stderr)
        return []
    rows = []
    for n in (1, 2, 4):
        relays = [RtspRelay(fps=25, mount=f"cam{i}") for i in range(n)]
        try:
            for relay in relays:
                relay.start()
                wait_until_served(relay.url, UDP_OPTIONS)
            stop = threading.Event()
            threading.Timer(seconds, stop.set).start()
            before = load()
            out = tmp / f"live{n}"
            results = track_streams([r.url for r in relays], engine, out, stop_event=stop, batch_size=batch_size,
                                    write_video=False, progress=False, ffmpeg_options=UDP_OPTIONS)
        finally:
            for relay in relays:
                relay.stop()
        for i, result in enumerate(results.values()):
            if isinstance(result, BaseException):
                rows.append([n, i, "failed", "", "", "", str(result)[:60], f"{before} → {load()}"])
                continue
            doc = result.to_dict()
            lat = doc["latency_s"] or {}
            rows.append([n, i, doc["frames_processed"], doc["fps"], doc["frames_dropped"],
                         1000 * lat.get("p50", float("nan")), 1000 * lat.get("p95", float("nan")),
                         f"{before} → {load()}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--frames", type=int, default=16, help="frames per video (128x96)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--parts", default="batch,ray,live")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    import torch

    torch.set_num_threads(1)
    model = build_model("tiny")
    engine = make_engine(model, 10, resolution=args.resolution)
    print(machine_line(model.device))
    print(f"tiny preset, {args.resolution}² engine input, 10 keypoints, batch {args.batch_size}, "
          f"{args.videos} videos of {args.frames} frames (128x96); load average 1/5/15 min shown per row")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        engine_file = tmp / "bench.engine"
        engine.save(engine_file)
        (tmp / "videos").mkdir()
        videos = [write_index_video(tmp / "videos" / f"v{i:02d}.mp4", args.frames).path for i in range(args.videos)]
        rows = []
        if "batch" in parts:
            rows += bench_batch(engine_file, videos, tmp, args.batch_size)
        if "ray" in parts:
            rows += bench_ray(engine_file, videos, tmp, args.batch_size)
        if rows:
            print_table("Many videos (wall time includes start-up and engine loading)",
                        ["run", "videos", "wall s", "videos/min", "load avg"], rows)
        if "live" in parts:
            live = bench_live(engine, tmp, args.live_seconds, args.batch_size)
            if live:
                print_table(f"Live streams through one engine ({args.live_seconds:g} s, 25 fps each)",
                            ["streams", "stream", "frames", "frames/s", "dropped", "p50 latency ms",
                             "p95 latency ms", "load avg"], live)


if __name__ == "__main__":
    main()
