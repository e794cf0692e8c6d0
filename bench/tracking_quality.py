"""Tracking accuracy on the sample and the real clips: detection only, + flow, + crops, and pure optical flow.

For each clip and support size (the first 1 or 3 labelled frames; 4 on the sample, its support.json), a tiny
engine is adapted on the support frames (cached), the engine's detections on every frame are computed once
(cached), and the variants are scored on the *query* frames (labelled frames that are not support frames):

- ``detection``: detections + constant-velocity RTS smoothing (``ppmtrack track --flow off``);
- ``+flow``: what ``ppmtrack track`` does by default: detections fused with pyramidal Lucas-Kanade flow in the
  Kalman filter (:mod:`tracker.fusion`), anchored at the support frames that lie in the video, RTS pass, each
  keypoint's detection noise from the engine's held-out validation (``--detection-noise auto``);
  ``+flow, causal``: the same without the RTS pass (what a live stream gets); ``+flow, no anchor``: the support
  frames not in the video;
- ``+crops`` / ``+crops+flow``: the same with the detections made through animal-centred crops
  (:mod:`pipelines.crops`, run causally in batches of 8 as ``ppmtrack track --crop on`` does);
- ``pure LK``: Lucas-Kanade flow chained from the first support frame (forward and backward), no detections,
  no filter, with the tracker's flow settings (and with the 21-px window used before).

Controls — what would expose a broken detector; the same cached detections, frames and anchors as ``+flow``:

- ``(a) flow+anchors, no detections``: the same filter with every detection left out (confidence 0);
- ``(b) LK restarted at each support frame``: pure LK from every support frame in the video, each frame taking
  the track of the nearest one in time (the anchors the system gets, not only the first);
- ``(c) random detections``: uniformly random positions in the frame with the real detections' confidences, so
  the filter weighs them exactly as it weighs the real ones (``--detection-noise auto``);
- ``(d) new session``: the clip ``session2`` (samples/session2.mp4, a new recording of the sample's animal)
  tracked with the engine adapted on the sample's support frames: no support frame in the video, no anchor.

A ``+flow`` row whose PCK@0.1 does not beat both (a) and (c) is marked "the detector adds nothing here".

Scoring: BADJA clips use the BADJA protocol (correct when the error is at most α·√(silhouette area)); the sample
and the DLC clip use ppmtrack's own (α·max(w, h) of the frame's labelled keypoints, ``pipelines.evaluate``).

    python bench/tracking_quality.py [--clips sample,session2,camel,cows,reaching] [--support 1,3] [--cache DIR]
                                     [--validate] [--crops] [--crop-views N] [--frames N]

Needs ../shared/data (skipped clip by clip when absent). CPU: adapting one engine takes ~1 min, detecting
~0.5 s per frame with the tiny model at 256².
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@dataclass
class Clip:
    """A video with labelled frames and its scoring rule."""

    name: str
    video: Path
    names: list[str]
    label_frames: np.ndarray  # (F,)
    label_xy: np.ndarray  # (F, K, 2), NaN = not visible
    scale: np.ndarray  # (F,) the length α multiplies: √(silhouette area) or max(w, h)
    support_sets: dict[int, list[int]]  # support size → frame indices
    skeleton: list
    support_from: str | None = None  # a new session: the engine is adapted on this clip's support frames


def _sample() -> Clip:
    from ppmtrack.pipelines.evaluate import MIN_BBOX_SIZE_PX, _bbox_sizes
    from ppmtrack.pipelines.io.annotation import read_annotation

    truth = read_annotation(ROOT / "samples" / "truth.json")
    support = read_annotation(ROOT / "samples" / "support.json")
    frames = np.array([r.frame for r in truth.frames])
    sup = [r.frame for r in support.frames]
    return Clip("sample", ROOT / "samples" / "sample.mp4", truth.names, frames, truth.keypoints,
                _bbox_sizes(truth.keypoints, MIN_BBOX_SIZE_PX), {1: sup[:1], 3: sup[:3], 4: sup},
                truth.skeleton)


def _badja(folder: str, name: str) -> Clip | None:
    path = DATA / folder
    if not (path / "labels.npz").is_file():
        return None
    d = np.load(path / "labels.npz")
    frames = d["frame_idx"].astype(int)
    return Clip(name, path / "video.mp4", [str(n) for n in d["names"]], frames, d["keypoints_xy"].astype(float),
                np.sqrt(d["mask_area"].astype(float)), {1: frames[:1].tolist(), 3: frames[:3].tolist()}, [])


def _reaching() -> Clip | None:
    from ppmtrack.pipelines.evaluate import MIN_BBOX_SIZE_PX, _bbox_sizes

    path = DATA / "dlc_reaching"
    if not (path / "labels_frames0-30.npz").is_file():
        return None
    d = np.load(path / "labels_frames0-30.npz")
    frames = d["frame_idx"].astype(int)
    xy = d["keypoints_xy"].astype(float)
    return Clip("reaching", path / "reaching_frames0-30.mp4", [str(n) for n in d["names"]], frames, xy,
                _bbox_sizes(xy, MIN_BBOX_SIZE_PX), {1: frames[:1].tolist(), 3: frames[:3].tolist()}, [])


def _session2() -> Clip:
    """The sample's new session: its engine comes from the sample's support frames, none lies in this video."""
    from ppmtrack.pipelines.evaluate import MIN_BBOX_SIZE_PX, _bbox_sizes
    from ppmtrack.pipelines.io.annotation import read_annotation

    truth = read_annotation(ROOT / "samples" / "session2_truth.json")
    frames = np.array([r.frame for r in truth.frames])
    return Clip("session2", ROOT / "samples" / "session2.mp4", truth.names, frames, truth.keypoints,
                _bbox_sizes(truth.keypoints, MIN_BBOX_SIZE_PX), {1: [], 3: [], 4: []}, truth.skeleton,
                support_from="sample")


CLIPS = {"sample": _sample, "session2": _session2, "camel": lambda: _badja("badja_camel", "camel"),
         "cows": lambda: _badja("badja_cows", "cows"), "reaching": _reaching}


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """All frames (T, H, W, 3) RGB uint8 and the frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames), fps


def support_of(clip: Clip, frames: np.ndarray, support_frames: list[int]):
    from ppmtrack.engine.support import SupportSet

    rows = [int(np.flatnonzero(clip.label_frames == f)[0]) for f in support_frames]
    return SupportSet(names=clip.names, images=[frames[f] for f in support_frames],
                      keypoints=clip.label_xy[rows], skeleton=clip.skeleton)


QUICK_ADAPT = dict(steps=40, fg_steps=10, views_per_frame=4)  # --quick: ~4x cheaper adaptation (loaded CPUs)


def engine_for(clip: Clip, frames: np.ndarray, n_support: int, cache: Path, quick: bool = False,
               crop_views: int = 0, validate: bool = False):
    """Adapt (or load the cached) tiny engine on the clip's first ``n_support`` labelled frames (with
    ``crop_views`` crop views per frame, `engine.crop_views`; with ``validate``, as ``ppmtrack adapt`` does by
    default: held-out validation choosing the learning rate and step count, `engine.validate`)."""
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.validate import ValidationConfig

    path = cache / f"{clip.name}_s{n_support}{_views_suffix(crop_views, validate)}.engine"
    if clip.name == "sample" and n_support == 4 and not crop_views and not validate and not path.is_file():
        shared = ROOT.parent / "helpers" / "sample.engine"
        if shared.is_file():
            return Engine.load(shared)
    if path.is_file():
        return Engine.load(path)
    t0 = time.perf_counter()
    config = AdaptConfig(**QUICK_ADAPT) if quick else AdaptConfig()
    config.crop.views_per_frame = crop_views
    engine = Engine.adapt(support_of(clip, frames, clip.support_sets[n_support]), model="tiny", config=config,
                          validation=ValidationConfig() if validate else None)
    engine.save(path)
    print(f"  adapted {path.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return engine


def detections_for(clip: Clip, frames: np.ndarray, n_support: int, cache: Path, batch: int = 8,
                   quick: bool = False, crop_views: int = 0, validate: bool = False):
    """(T, K, 2) raw detections and (T, K) confidences of the engine on every frame (cached)."""
    path = cache / f"{clip.name}_s{n_support}{_views_suffix(crop_views, validate)}.detections.npz"
    if path.is_file():
        d = np.load(path)
        return d["xy"][:len(frames)], d["confidence"][:len(frames)]
    if clip.support_from:  # a new session: the engine of the other recording
        source = CLIPS[clip.support_from]()
        engine = engine_for(source, read_video(source.video)[0], n_support, cache, quick, crop_views, validate)
    else:
        engine = engine_for(clip, frames, n_support, cache, quick, crop_views, validate)
    xy, conf = [], []
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        p = engine.predict(frames[i:i + batch])
        xy.append(p.keypoints)
        conf.append(p.confidence)
    xy, conf = np.concatenate(xy), np.concatenate(conf)
    np.savez(path, xy=xy, confidence=conf)
    print(f"  detected {len(frames)} frames of {clip.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return xy, conf


def crop_detections_for(clip: Clip, frames: np.ndarray, n_support: int, cache: Path, batch: int = 8,
                        quick: bool = False, crop_views: int = 0, validate: bool = False):
    """(T, K, 2) detections and (T, K) confidences through animal-centred crops, the crop statistics and the
    inference ms/frame of that run (cached), with the engine of `engine_for`."""
    from ppmtrack.pipelines.crops import crop_policy_for, predict_with_crops

    stem = f"{clip.name}_s{n_support}{_views_suffix(crop_views, validate)}.crops"
    path = cache / f"{stem}.T{len(frames)}.npz"
    longer = [p for p in cache.glob(f"{stem}.T*.npz") if int(p.stem.rsplit(".T", 1)[1]) >= len(frames)]
    if longer:  # the policy is causal: the first frames of a longer run are this run
        d = np.load(longer[0])
        return (d["xy"][:len(frames)], d["confidence"][:len(frames)], json.loads(str(d["stats"])) | {"of_frames": int(
            longer[0].stem.rsplit(".T", 1)[1])}, float(d["ms"]))
    engine = engine_for(clip, frames, n_support, cache, quick, crop_views, validate)
    policy = crop_policy_for(engine, "on")
    xy, conf = [], []
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        p = predict_with_crops(engine, frames[i:i + batch], policy)
        xy.append(p.keypoints)
        conf.append(p.confidence)
    ms = 1000 * (time.perf_counter() - t0) / len(frames)
    xy, conf = np.concatenate(xy), np.concatenate(conf)
    stats = policy.stats.to_dict()
    np.savez(path, xy=xy, confidence=conf, stats=json.dumps(stats), ms=ms)
    print(f"  detected {len(frames)} frames of {clip.name} through crops in {ms * len(frames) / 1000:.0f} s: {stats}",
          file=sys.stderr)
    return xy, conf, stats, ms


def engine_info(path: Path) -> dict:
    """The ``info`` of a cached engine file (validation, support sizes); {} when there is none."""
    from ppmtrack.engine.engine_file import read_engine_file

    if not path.is_file():
        return {}
    return read_engine_file(path)[1].get("info", {})


def _views_suffix(crop_views: int, validate: bool = False) -> str:
    return (f"_cv{crop_views}" if crop_views else "") + ("_val" if validate else "")


def pck(clip: Clip, xy: np.ndarray, query: np.ndarray, alpha: float) -> float:
    """Fraction of visible labelled keypoints on the query rows within α·scale (missing = wrong)."""
    truth = clip.label_xy[query]
    pred = xy[clip.label_frames[query]]
    labelled = np.isfinite(truth).all(-1)
    err = np.linalg.norm(pred - truth, axis=-1)
    correct = labelled & (np.nan_to_num(err, nan=np.inf) <= alpha * clip.scale[query][:, None])
    return float(correct.sum() / labelled.sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default="sample,session2,camel,cows,reaching")
    parser.add_argument("--support", default="1,3", help="support sizes (the sample also gets 4 = support.json)")
    parser.add_argument("--cache", default="/tmp/ppmtrack-bench-quality", help="engines and detections")
    parser.add_argument("--detect-only", action="store_true", help="only fill the cache")
    parser.add_argument("--cached-only", action="store_true",
                        help="score only the clip/support pairs whose detections are cached (no adaptation)")
    parser.add_argument("--json", help="also write the table as JSON here")
    parser.add_argument("--crops", action="store_true", help="also score +crops and +crops+flow")
    parser.add_argument("--crop-views", type=int, default=0, dest="crop_views",
                        help="adapt the engines with this many crop views per support frame (own cache names)")
    parser.add_argument("--frames", type=int, help="only the first N frames of each clip (short spans)")
    parser.add_argument("--detection-noise", type=float, action="append", dest="detection_noise", metavar="PX",
                        help="also score +flow with this detection noise (SmoothingParams.measurement_noise_px, "
                             "the standard deviation of a detection at confidence 1; default 2 px); repeatable")
    parser.add_argument("--validate", action="store_true",
                        help="adapt as `ppmtrack adapt` does by default: held-out validation chooses the learning "
                             "rate and step count and measures the engine's accuracy (own cache names)")
    parser.add_argument("--quick", action="store_true",
                        help=f"adapt with {QUICK_ADAPT} instead of the defaults (use a separate --cache)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.support.split(",") if s]
    rows = []
    for name in args.clips.split(","):
        clip = CLIPS[name]()
        if clip is None:
            print(f"{name}: data not found under {DATA}, skipped", file=sys.stderr)
            continue
        all_frames, fps = read_video(clip.video)
        frames = all_frames[:args.frames] if args.frames else all_frames
        for n in dict.fromkeys(sizes + ([4] if name in ("sample", "session2") else [])):
            if n not in clip.support_sets:
                continue
            suffix = _views_suffix(args.crop_views, args.validate)
            if args.cached_only and not (cache / f"{clip.name}_s{n}{suffix}.detections.npz").is_file():
                continue
            if args.frames and not clip.support_from:  # adapt on all support frames, even beyond the span
                engine_for(clip, all_frames, n, cache, args.quick, args.crop_views, args.validate)
            raw_xy, conf = detections_for(clip, frames, n, cache, quick=args.quick, crop_views=args.crop_views,
                                          validate=args.validate)
            cropped = crop_detections_for(clip, frames, n, cache, quick=args.quick, crop_views=args.crop_views,
                                          validate=args.validate) if args.crops else None
            if args.detect_only:
                continue
            info = engine_info(cache / f"{clip.support_from or clip.name}_s{n}{suffix}.engine")
            rows.append(score_variants(clip, frames, fps, n, raw_xy, conf, cropped, args.detection_noise or (),
                                       info))
            print(format_row(rows[-1]), flush=True)
    if rows:
        print(format_table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def score_variants(clip: Clip, frames: np.ndarray, fps: float, n_support: int, raw_xy: np.ndarray,
                   conf: np.ndarray, cropped=None, detection_noise=(), info: dict | None = None) -> dict:
    """PCK of every variant on the query frames among ``frames``; ``cropped``: `crop_detections_for`'s result;
    ``detection_noise``: extra ``+flow`` rows with these fixed detection noises (px at confidence 1); ``info``:
    the engine's info — with a validation record, the flow variants weigh the detections by its held-out errors
    as ``ppmtrack track`` does (``--detection-noise auto``; without one, 2 px), and the row carries the
    validation's numbers."""
    from ppmtrack.pipelines.detection_noise import resolve_detection_noise
    from ppmtrack.tracker import SmoothingParams, smooth_keypoints
    from ppmtrack.tracker.flow import FlowParams, track_points_flow
    from ppmtrack.tracker.fusion import Anchors, fuse_keypoints
    from ppmtrack.tracker.kalman import measure_flow

    support_frames = [f for f in clip.support_sets[n_support] if f < len(frames)]
    query = np.flatnonzero(~np.isin(clip.label_frames, support_frames) & (clip.label_frames < len(frames)))
    t = np.arange(len(frames)) / fps
    rows = {}
    xy, _ = smooth_keypoints(raw_xy, conf, t)
    rows["detection"] = xy
    sup_rows = [int(np.flatnonzero(clip.label_frames == f)[0]) for f in support_frames]
    anchors = Anchors(frame=np.array(support_frames), xy=clip.label_xy[sup_rows]) if support_frames else None
    params = FlowParams()
    # what `ppmtrack track` does: the engine's held-out errors as detection noise (--detection-noise auto)
    auto, _ = resolve_detection_noise(info or {}, clip.names, SmoothingParams(), "auto", frames.shape[1:3])

    def system(detections, confidence, smooth=True, with_anchors=anchors):
        flow = measure_flow(frames, detections, confidence, t, with_anchors, params=auto, flow_params=params)
        return fuse_keypoints(detections, confidence, t, flow, anchors=with_anchors, params=auto, smooth=smooth)[0]

    t0 = time.perf_counter()
    flow = measure_flow(frames, raw_xy, conf, t, anchors, params=auto, flow_params=params)
    flow_ms = 1000 * (time.perf_counter() - t0) / len(frames)
    rows["+flow"] = fuse_keypoints(raw_xy, conf, t, flow, anchors=anchors, params=auto, smooth=True)[0]
    rows["+flow, causal"] = fuse_keypoints(raw_xy, conf, t, flow, anchors=anchors, params=auto, smooth=False)[0]
    if anchors is not None:
        rows["+flow, no anchor"] = system(raw_xy, conf, with_anchors=None)
    for noise in detection_noise:
        fixed = SmoothingParams(measurement_noise_px=noise)
        fixed_flow = measure_flow(frames, raw_xy, conf, t, anchors, params=fixed, flow_params=params)
        rows[f"+flow, noise {noise:g} px"] = fuse_keypoints(raw_xy, conf, t, fixed_flow, anchors=anchors,
                                                            params=fixed, smooth=True)[0]
    # controls on the same frames and anchors
    if anchors is not None:
        rows["(a) flow+anchors, no detections"] = system(np.full_like(raw_xy, np.nan), np.zeros_like(conf))
        rows["(b) LK restarted at each support frame"] = lk_from_every_support_frame(frames, support_frames,
                                                                                      clip.label_xy[sup_rows], params)
    rows["(c) random detections"] = system(random_detections(raw_xy, frames.shape[1:3]), conf)
    if anchors is not None:
        rows["pure LK"] = track_points_flow(frames, support_frames[0], clip.label_xy[sup_rows[0]], params)
        wide = FlowParams(window_px=21)  # the window before it was chosen on these clips
        rows["pure LK, 21 px window"] = track_points_flow(frames, support_frames[0], clip.label_xy[sup_rows[0]],
                                                          wide)
    result = {"clip": clip.name, "support": n_support, "query_frames": int(len(query)),
              "flow_ms_per_frame": round(flow_ms, 1)}
    validation = (info or {}).get("validation") or {}
    if "error_px" in validation:
        result["validation"] = {"mode": validation["mode"], "pck@0.1": validation["pck@0.1"],
                                "pck@0.2": validation["pck@0.2"], "error_px": round(validation["error_px"], 1),
                                "chosen": validation["chosen"]}
        result["detection_error_px"] = round(float(np.nanmean(np.linalg.norm(
            raw_xy[clip.label_frames[query]] - clip.label_xy[query], axis=-1))), 1)
    if cropped is not None:
        crop_xy, crop_conf, stats, ms = cropped
        rows["+crops"] = smooth_keypoints(crop_xy, crop_conf, t)[0]
        crop_flow = measure_flow(frames, crop_xy, crop_conf, t, anchors, params=auto, flow_params=params)
        rows["+crops+flow"] = fuse_keypoints(crop_xy, crop_conf, t, crop_flow, anchors=anchors, params=auto,
                                             smooth=True)[0]
        result.update(crop_stats=stats, crop_inference_ms_per_frame=round(ms, 1))
    result["self_check"] = {"engine": self_check_of(clip, raw_xy, conf, t, frames, anchors, auto, params,
                                                    rows["+flow"]),
                            "random detections": self_check_of(clip, random_detections(raw_xy, frames.shape[1:3]),
                                                               conf, t, frames, anchors, auto, params,
                                                               rows["(c) random detections"])}
    if clip.support_from:
        result["new_session"] = f"engine adapted on {clip.support_from}; no support frame in this video"
    for variant, pos in rows.items():
        result[variant] = {a: round(pck(clip, pos, query, a), 3) for a in (0.1, 0.2)}
    result["verdict"] = verdict(result)
    return result


def self_check_of(clip: Clip, raw_xy, conf, t, frames, anchors, params, flow_params, track) -> dict:
    """The run's detector self-check (`tracker.selfcheck`, as `ppmtrack track` runs it) on these detections:
    mean agreement and chance over the keypoints, and the keypoints flagged."""
    from ppmtrack.pipelines.self_check import MIN_RADIUS_PX
    from ppmtrack.tracker.kalman import measure_flow
    from ppmtrack.tracker.selfcheck import check_detector

    flow = measure_flow(frames, raw_xy, conf, t, anchors, params=params, flow_params=flow_params)
    k = len(clip.names)
    radius = np.maximum(np.broadcast_to(np.asarray(params.measurement_noise_px, float), (k,)), MIN_RADIUS_PX)
    ok = np.isfinite(flow.fb_error) & (flow.fb_error <= params.max_flow_error_px)
    checks = check_detector(clip.names, np.arange(len(frames)), raw_xy, flow.displacement, ok, track, radius,
                            window=max(30, len(frames) // 4))
    agreement = [c.agreement for c in checks if c.agreement is not None]
    chance = [c.chance for c in checks if c.chance is not None]
    return {"agreement": round(float(np.mean(agreement)), 3) if agreement else None,
            "chance": round(float(np.mean(chance)), 3) if chance else None,
            "flagged": sum(c.verdict == "no better than chance" or bool(c.bad_stretches) for c in checks),
            "keypoints": k}


def random_detections(raw_xy: np.ndarray, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Control (c): uniformly random positions in the frame where the engine detected something (NaN stays NaN)."""
    h, w = shape
    rng = np.random.default_rng(seed)
    out = np.stack([rng.uniform(0, w - 1, raw_xy.shape[:2]), rng.uniform(0, h - 1, raw_xy.shape[:2])], axis=-1)
    return np.where(np.isfinite(raw_xy), out, np.nan)


def lk_from_every_support_frame(frames, support_frames: list[int], support_xy: np.ndarray, params) -> np.ndarray:
    """Control (b): pure LK chained from every support frame; each frame takes the track of the nearest one."""
    from ppmtrack.tracker.flow import track_points_flow

    tracks = [track_points_flow(frames, f, xy, params) for f, xy in zip(support_frames, support_xy, strict=True)]
    nearest = np.argmin(np.abs(np.arange(len(frames))[:, None] - np.array(support_frames)[None]), axis=1)
    return np.stack([tracks[j][i] for i, j in enumerate(nearest)])


def verdict(result: dict) -> str:
    """"the detector adds nothing here" when +flow does not beat controls (a) and (c) at PCK@0.1."""
    controls = [result[k][0.1] for k in ("(a) flow+anchors, no detections", "(c) random detections") if k in result]
    if controls and result["+flow"][0.1] <= max(controls):
        return "the detector adds nothing here"
    return "the detector adds to the controls" if controls else ""


def format_row(r: dict) -> str:
    parts = [f"{k} {v[0.1]:.3f}/{v[0.2]:.3f}" for k, v in r.items() if isinstance(v, dict) and 0.1 in v]
    what = " (new session)" if r.get("new_session") else ""
    return (f"{r['clip']}{what} support {r['support']} ({r['query_frames']} query frames): " + ", ".join(parts)
            + (f" — {r['verdict']}" if r.get("verdict") else ""))


def format_table(rows: list[dict]) -> str:
    variants = list(dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, dict) and 0.1 in v))
    lines = [f"machine: {platform.node()} ({platform.processor() or platform.machine()}), tiny model, CPU",
             "", "| clip | support | query frames | " + " | ".join(f"{v} PCK@0.1 / @0.2" for v in variants) + " |",
             "|---|---|---|" + "---|" * len(variants)]
    for r in rows:
        cells = " | ".join(f"{r[v][0.1]:.2f} / {r[v][0.2]:.2f}" if v in r else "–" for v in variants)
        lines.append(f"| {r['clip']} | {r['support']} | {r['query_frames']} | {cells} |")
    checked = [r for r in rows if "self_check" in r]
    if checked:
        lines += ["", "Detector self-check (agreement of detections with the flow vs chance; keypoints flagged):", "",
                  "| clip | support | engine: agreement / chance, flagged | random detections: agreement / chance, "
                  "flagged |", "|---|---|---|---|"]
        for r in checked:
            cells = [f"{c['agreement']} / {c['chance']}, {c['flagged']} of {c['keypoints']}"
                     for c in (r["self_check"]["engine"], r["self_check"]["random detections"])]
            lines.append(f"| {r['clip']} | {r['support']} | {cells[0]} | {cells[1]} |")
    flagged = [f"{r['clip']} support {r['support']}" for r in rows
               if r.get("verdict") == "the detector adds nothing here"]
    if flagged:
        lines += ["", "the detector adds nothing here (+flow does not beat controls (a) and (c) at PCK@0.1): "
                  + ", ".join(flagged)]
    validated = [r for r in rows if "validation" in r]
    if validated:
        lines += ["", "Does the validation predict the result? Held-out numbers `adapt` printed beside the detections"
                  " on the video's query frames:", "",
                  "| clip | support | validation | held-out PCK@0.1 / @0.2 | held-out error px | detection PCK@0.1 / "
                  "@0.2 on the video | detection error px on the video |", "|---|---|---|---|---|---|---|"]
        for r in validated:
            v = r["validation"]
            lines.append(f"| {r['clip']} | {r['support']} | {v['mode']} | {v['pck@0.1']:.2f} / {v['pck@0.2']:.2f} | "
                         f"{v['error_px']:.1f} | {r['detection'][0.1]:.2f} / {r['detection'][0.2]:.2f} | "
                         f"{r['detection_error_px']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
