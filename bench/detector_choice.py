"""Which detector should ``track`` use by default: PPM's maps, the feature correspondence, or both?

For each clip a tiny engine is adapted on its first labelled frame (``bench/tracking_quality.py``'s
``engine_for``, ``--quick`` settings, cached in ``--cache``); every frame goes through one forward that gives
both detections (``engine.correspond_engine.predict_with_features``); each ``--detector`` mode's measurements
(``combine``) are then scored as ``ppmtrack track`` would track them: smoothed alone ("detection") and fused with
LK flow with the support frame as anchor ("+flow"), PCK@0.1/0.2 on the other labelled frames (the clip's own
scale: √silhouette area for BADJA, the keypoint box for the others).

The default is chosen on ``--choose`` clips (the sample and reaching) and reported on ``--report`` clips (camel
and cows), which played no part in the choice. With the tiny model (random UNet weights) the comparison is about
this model's features; with SD 1.5 it has to be made again (``--model`` is not offered: ``engine_for`` adapts
the tiny preset).

    python bench/detector_choice.py [--cache /tmp/ppm-bench] [--choose sample,reaching] [--report camel,cows]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking_quality import CLIPS, engine_for, pck, read_video, support_of  # noqa: E402

MODES = ("ppm", "features", "both")
MARGIN = 0.02  # PCK difference below which the detectors count as tied (the default, ppm, stays)


def detections(engine, frames: np.ndarray, desc, batch: int = 8) -> tuple[dict, float]:
    """mode → ((T, K, 2) raw keypoints, (T, K) confidences) for every frame, and ms per frame of the forward."""
    from ppmtrack.engine.correspond_engine import combine, predict_with_features

    out = {m: ([], []) for m in MODES}
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        ppm, xy, conf, cell = predict_with_features(engine, frames[i:i + batch], desc)
        for m in MODES:
            p = combine(ppm, xy, conf, m, cell)
            out[m][0].append(p.keypoints)
            out[m][1].append(p.confidence)
    ms = 1000 * (time.perf_counter() - t0) / len(frames)
    return {m: (np.concatenate(a), np.concatenate(b)) for m, (a, b) in out.items()}, ms


def score(clip, frames, fps, raw, conf, info) -> dict:
    from ppmtrack.pipelines.detection_noise import resolve_detection_noise
    from ppmtrack.tracker import SmoothingParams, smooth_keypoints
    from ppmtrack.tracker.fusion import Anchors, fuse_keypoints, measure_flow

    support = clip.support_sets[1]
    query = np.flatnonzero(~np.isin(clip.label_frames, support) & (clip.label_frames < len(frames)))
    t = np.arange(len(frames)) / fps
    rows = [int(np.flatnonzero(clip.label_frames == f)[0]) for f in support]
    anchors = Anchors(frame=np.array(support), xy=clip.label_xy[rows])
    params, _ = resolve_detection_noise(info or {}, clip.names, SmoothingParams(), "auto", frames.shape[1:3])
    variants = {"detection": smooth_keypoints(raw, conf, t)[0]}
    flow = measure_flow(frames, raw, conf, t, anchors, params=params)
    variants["+flow"] = fuse_keypoints(raw, conf, t, flow, anchors=anchors, params=params, smooth=True)[0]
    return {v: {a: pck(clip, xy, query, a) for a in (0.1, 0.2)} for v, xy in variants.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="/tmp/ppm-bench", help="folder for the adapted engines")
    parser.add_argument("--choose", default="sample,reaching")
    parser.add_argument("--report", default="camel,cows")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    import torch

    from ppmtrack.engine.correspond_engine import describe_support

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"# Detector choice — {platform.node()} ({platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, tiny model, 1 support frame, quick adaptation\n")
    results = []
    for role, names in (("choose", args.choose), ("report", args.report)):
        for name in [n for n in names.split(",") if n]:
            clip = CLIPS[name]()
            if clip is None:
                print(f"({name}: data absent, skipped)")
                continue
            frames, fps = read_video(clip.video)
            frames = frames[: int(clip.label_frames.max()) + 1]
            engine = engine_for(clip, frames, 1, cache, quick=True)
            desc = engine.keypoint_descriptors
            if desc is None:  # an engine cached before descriptors were stored
                desc = describe_support(engine, support_of(clip, frames, clip.support_sets[1]))
            dets, ms = detections(engine, frames, desc)
            for mode in MODES:
                results.append((role, name, mode, score(clip, frames, fps, *dets[mode], engine.info), ms))
    print("| role | clip | --detector | PCK@0.1 detection | PCK@0.1 +flow | PCK@0.2 detection | PCK@0.2 +flow |")
    print("|---|---|---|---|---|---|---|")
    for role, name, mode, s, _ in results:
        print(f"| {role} | {name} | {mode} | {s['detection'][0.1]:.3f} | {s['+flow'][0.1]:.3f} | "
              f"{s['detection'][0.2]:.3f} | {s['+flow'][0.2]:.3f} |")
    for role in ("choose", "report"):
        rows = [r for r in results if r[0] == role]
        if rows:
            means = {m: np.mean([r[3]["+flow"][0.1] for r in rows if r[2] == m]) for m in MODES}
            best = max(means, key=means.get)
            # the default (ppm) changes only for a detector ahead by more than about one keypoint in 50
            chosen = best if means[best] > means["ppm"] + MARGIN else "ppm"
            print(f"\nmean PCK@0.1 +flow on the '{role}' clips: "
                  + ", ".join(f"{m} {v:.3f}" for m, v in means.items())
                  + (f" → default {chosen} (best {best}; another detector replaces ppm only when ahead by more "
                     f"than {MARGIN})" if role == "choose" else ""))
    print(f"\nforward with both read-outs: {np.mean([r[4] for r in results]):.0f} ms/frame (mean over clips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
