"""Compare the optical-flow methods of tracker.flow on clips with ground truth: accuracy and cost.

For every pair of consecutive labelled frames (a, b) the labelled keypoints of frame a are chained by flow
through the frames up to b and compared with the labels of b (visible in both). On the sample every frame is
labelled (1-frame steps); on the BADJA clips labels are ~5 frames apart. Reports the median and 90th-percentile
error in pixels, the share of points whose forward-backward check failed (error > FlowParams.max_fb_error_px)
somewhere on the way, and the flow's cost in ms per frame for 20 points.

    python bench/flow_methods.py [--clips sample,camel,cows] [--methods lk,dis,rlof]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking_quality import CLIPS, read_video  # noqa: E402


def main(argv=None) -> int:
    from ppmtrack.tracker.flow import FlowParams, flow_image, propagate_points

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default="sample,camel,cows")
    parser.add_argument("--methods", default="lk,dis,rlof")
    parser.add_argument("--max-pairs", type=int, default=40, help="labelled pairs per clip (spread evenly)")
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()} ({platform.machine()}), CPU\n")
    print("| clip | method | pairs | median error px | p90 error px | fb-check failed | ms/frame |")
    print("|---|---|---|---|---|---|---|")
    for name in args.clips.split(","):
        clip = CLIPS[name]()
        if clip is None:
            continue
        frames, _ = read_video(clip.video)
        pairs = [(i, i + 1) for i in range(len(clip.label_frames) - 1)]
        pairs = [pairs[i] for i in np.unique(np.linspace(0, len(pairs) - 1, args.max_pairs).astype(int))]
        for method in args.methods.split(","):
            params = FlowParams(method=method)
            errors, failed, seconds, steps = [], 0, 0.0, 0
            for a, b in pairs:
                xy = clip.label_xy[a].copy()
                ok = np.isfinite(xy).all(1) & np.isfinite(clip.label_xy[b]).all(1)
                xy[~ok] = np.nan
                bad = np.zeros(len(xy), bool)
                image = flow_image(frames[clip.label_frames[a]], params)
                for t in range(clip.label_frames[a] + 1, clip.label_frames[b] + 1):
                    t0 = time.perf_counter()
                    nxt = flow_image(frames[t], params)
                    moved, fb = propagate_points(image, nxt, xy, params, frames.shape[1:3])
                    seconds += time.perf_counter() - t0
                    steps += 1
                    bad |= ok & ~(fb <= params.max_fb_error_px)
                    good = np.isfinite(fb)
                    xy[good] = moved[good]
                    image = nxt
                errors.append(np.linalg.norm(xy[ok] - clip.label_xy[b][ok], axis=1))
                failed += int(bad.sum())
            e = np.concatenate(errors)
            e = np.nan_to_num(e, nan=1e4)
            print(f"| {name} | {method} | {len(pairs)} | {np.median(e):.2f} | {np.percentile(e, 90):.2f} | "
                  f"{failed / len(e):.1%} | {1000 * seconds / steps:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
