"""Memory of a tracking run against the length of the video: max RSS of `track_video` on a short and a long
synthetic video (small frames, no annotated video), each run in a fresh process.

    python bench/long_video_memory.py                          # 10k vs 100k frames, 8 keypoints
    python bench/long_video_memory.py --long 500000 --keypoints 20

What it measures: the pipeline's own memory — decoding, optical flow, the keypoint filter, the growing CSV, the
per-frame run state (``STEM.state/``) and the forward-backward smoothing at the end. The engine is NOT the PPM
model: a cheap detector (each keypoint at a fixed offset from the brightest blob of the frame, confidence 0.9)
stands in for it, because the tiny random model runs about a frame a second on a loaded 2-core CPU and would need
days for 100k frames. An engine's memory depends on the batch, not on the video's length, so what grows with the
video is all here. Target (issue 19): the long run ≤ 200 MB more than the 10k-frame run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 64, 48


def write_video(path: Path, n_frames: int, fps: int = 30) -> None:
    """A small video of a bright blob wandering over a dark, textured background."""
    import av

    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28"}
        for i in range(n_frames):
            x = int(WIDTH / 2 + 20 * np.sin(i / 37.0))
            y = int(HEIGHT / 2 + 14 * np.cos(i / 53.0))
            image = background.copy()
            image[max(0, y - 3):y + 4, max(0, x - 3):x + 4] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@dataclass
class _Model:
    name: str = "brightest-blob (not PPM)"
    device: str = "cpu"


@dataclass
class BlobEngine:
    """A cheap stand-in for an engine: keypoint k at a fixed offset from the frame's brightest blob."""

    n_keypoints: int = 8
    names: list = field(default_factory=list)
    skeleton: list = field(default_factory=list)
    flip_pairs: list = field(default_factory=list)
    resolution: int = 64
    layers: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    model: _Model = field(default_factory=_Model)
    path: Path | None = None

    def __post_init__(self):
        self.names = [f"k{i}" for i in range(self.n_keypoints)]
        angle = np.linspace(0, 2 * np.pi, self.n_keypoints, endpoint=False)
        self.offsets = np.stack([3 * np.cos(angle), 3 * np.sin(angle)], axis=1)

    def predict(self, frames, return_maps: bool = False):
        from ppmtrack.engine.api import Prediction

        frames = np.asarray(frames)
        grey = frames.mean(axis=3)
        flat = grey.reshape(len(frames), -1).argmax(axis=1)
        centre = np.stack([flat % frames.shape[2], flat // frames.shape[2]], axis=1).astype(np.float64)
        keypoints = centre[:, None, :] + self.offsets[None]
        confidence = np.full(keypoints.shape[:2], 0.9)
        return Prediction(keypoints, confidence, np.ones_like(confidence))

    def reset_stream(self) -> None:
        pass


def child(video: str, stop: int, keypoints: int, out: str) -> None:
    """One run in this process; prints a JSON line with its max RSS."""
    from ppmtrack.pipelines.track import track_video

    t0 = time.perf_counter()
    summary = track_video(video, BlobEngine(keypoints), out, stop=stop, batch_size=16, write_video=False,
                          progress=False)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": summary.frames_processed, "status": summary.status, "max_rss_mb": rss_mb,
                      "wall_s": time.perf_counter() - t0, "csv_positions": summary.csv_positions,
                      "finalize_s": summary.finalize_s}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=10_000, help="frames of the short run (default 10000)")
    parser.add_argument("--long", type=int, default=100_000, help="frames of the long run (default 100000)")
    parser.add_argument("--keypoints", type=int, default=8, help="keypoints (default 8)")
    parser.add_argument("--workdir", help="folder for the video and outputs (default: a temporary folder)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        video, stop, keypoints, out = args.child
        child(video, int(stop), int(keypoints), out)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ppmtrack-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    video = work / f"long_{args.long}.mp4"
    if not video.is_file():
        t0 = time.perf_counter()
        write_video(video, args.long)
        print(f"wrote {video} ({args.long} frames {WIDTH}x{HEIGHT}) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    import ppmtrack

    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"ppmtrack from {Path(ppmtrack.__file__).parent}")
    print("engine: brightest-blob stand-in (NOT the PPM model; it measures the pipeline's memory), "
          f"{args.keypoints} keypoints, {WIDTH}x{HEIGHT} frames, --no-video, flow on, RTS smoothing at the end")
    print(f"{'frames':>8} | {'max RSS (MB)':>12} | {'wall (s)':>8} | {'smoothing + CSV rewrite (s)':>27} | status")
    rows = []
    for n in (args.short, args.long):
        out = work / f"out_{n}"
        result = subprocess.run([sys.executable, __file__, "--child", str(video), str(n), str(args.keypoints),
                                 str(out)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the {n}-frame run failed")
        doc = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(doc)
        final = doc["finalize_s"].get("rts_smoothing", 0) + doc["finalize_s"].get("csv_rewrite", 0)
        print(f"{doc['frames']:>8} | {doc['max_rss_mb']:>12.0f} | {doc['wall_s']:>8.0f} | {final:>27.0f} | "
              f"{doc['status']}, {doc['csv_positions']}")
    print(f"long − short: {rows[1]['max_rss_mb'] - rows[0]['max_rss_mb']:+.0f} MB (target ≤ +200 MB)")


if __name__ == "__main__":
    main()
