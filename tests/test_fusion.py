"""Tests of the vectorised keypoint filter (tracker.fusion) and optical-flow fusion (tracker.flow)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from filterpy.common import Q_continuous_white_noise
from filterpy.kalman import KalmanFilter

from ppmtrack.tracker import OnlineSmoother, SmoothingParams, filter_keypoints, smooth_keypoints
from ppmtrack.tracker.flow import FlowParams, flow_image, propagate_points, track_points_flow
from ppmtrack.tracker.fusion import Anchors, FlowTrack, fuse_keypoints
from ppmtrack.tracker.kalman import measure_flow
from ppmtrack.tracker.visibility import measured_mask, track_segments

FPS = 30.0


def filterpy_reference(raw_xy, confidence, time, params, smooth):
    """The previous implementation: one filterpy KalmanFilter (x, y, vx, vy) per keypoint and track segment."""
    visible = measured_mask(raw_xy, confidence, params.min_confidence)
    out = np.full(raw_xy.shape, np.nan)
    dts = np.diff(time, prepend=time[:1])
    for k in range(raw_xy.shape[1]):
        for start, stop in track_segments(time, visible[:, k], params.max_occluded_s):
            kf = KalmanFilter(dim_x=4, dim_z=2)
            kf.H = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
            r = (params.measurement_noise_px / confidence[start, k]) ** 2
            kf.x = np.array([raw_xy[start, k, 0], raw_xy[start, k, 1], 0.0, 0.0])
            kf.P = np.diag([r, r, params.initial_speed_px_s ** 2, params.initial_speed_px_s ** 2])
            means, covs, fs, qs = [kf.x.copy()], [kf.P.copy()], [np.eye(4)], [np.zeros((4, 4))]
            for i in range(start + 1, stop):
                f = np.eye(4)
                f[0, 2] = f[1, 3] = dts[i]
                q = Q_continuous_white_noise(dim=2, dt=dts[i], spectral_density=params.process_noise ** 2,
                                             block_size=2, order_by_dim=False)
                kf.predict(F=f, Q=q)
                if visible[i, k]:
                    kf.update(raw_xy[i, k], R=np.eye(2) * (params.measurement_noise_px / confidence[i, k]) ** 2)
                means.append(kf.x.copy())
                covs.append(kf.P.copy())
                fs.append(f)
                qs.append(q)
            means = np.array(means)
            if smooth and len(means) > 1:
                means = kf.rts_smoother(means, np.array(covs), np.array(fs), np.array(qs))[0]
            out[start:stop, k] = means[:, :2]
    return out, visible


def test_vectorised_filter_and_smoother_equal_filterpy_per_keypoint():
    rng = np.random.default_rng(0)
    time = np.cumsum(rng.uniform(0.7, 1.3, 400)) / FPS
    time[200:] += 1.5  # a gap longer than max_occluded_s: every keypoint restarts
    truth = 200 + np.cumsum(rng.normal(0, 3, (400, 5, 2)), axis=0)
    confidence = rng.uniform(0.05, 1.0, (400, 5))
    raw_xy = truth + rng.normal(0, 3, truth.shape) / confidence[..., None]
    raw_xy[rng.random((400, 5)) < 0.05] = np.nan
    confidence[100:150, 2] = 0.0  # a long occlusion: lost, then restarted
    params = SmoothingParams(max_occluded_s=0.8)
    for smooth, run in ((False, filter_keypoints), (True, smooth_keypoints)):
        expected_xy, expected_visible = filterpy_reference(raw_xy, confidence, time, params, smooth)
        xy, visible = run(raw_xy, confidence, time, params)
        np.testing.assert_array_equal(visible, expected_visible)
        np.testing.assert_array_equal(np.isnan(xy), np.isnan(expected_xy))
        np.testing.assert_allclose(xy, expected_xy, rtol=0, atol=1e-6)


def textured(shape, seed, blur=2.0):
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, shape).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), blur) * 3 - 255, 0, 255).astype(np.uint8)


def sprite_video(n_frames=120, seed=0, image_noise=12.0):
    """A textured 48-px square sprite moving and slowly rotating over a textured background, with sensor noise;
    its low-contrast texture changes (cross-fades to another) from the first to the last frame: flow drifts.

    Returns frames (T, H, W, 3) uint8 and the true positions (T, 3, 2) of three points on the sprite.
    """
    rng = np.random.default_rng(seed)
    h, w = 140, 200
    background = textured((h, w), seed + 1)
    sprites = textured((48, 48), seed + 2, blur=1.5), textured((48, 48), seed + 3, blur=1.5)
    offsets = np.array([[-7.0, -5.0], [6.0, -6.0], [0.0, 8.0]])
    frames, truth = [], []
    for t in range(n_frames):
        centre = np.array([100 + 55 * np.sin(2 * np.pi * t / 90), 70 + 30 * np.sin(2 * np.pi * t / 60)])
        angle = 0.4 * np.sin(2 * np.pi * t / 120)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        warp = np.hstack([rotation, (centre - rotation @ np.array([23.5, 23.5]))[:, None]])
        fade = t / (n_frames - 1)
        sprite = (128 + 0.35 * ((1 - fade) * sprites[0] + fade * sprites[1] - 128)).astype(np.float32)
        layer = cv2.warpAffine(sprite, warp, (w, h), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.ones((48, 48), np.float32), warp, (w, h))
        image = background * (1 - mask) + layer * mask + rng.normal(0, image_noise, (h, w))
        frames.append(np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
        truth.append(centre + offsets @ rotation.T)
    return np.stack(frames), np.stack(truth)


def rms(a, b):
    return float(np.sqrt(np.nanmean(np.sum((a - b) ** 2, axis=-1))))


def test_flow_fusion_beats_detection_only_and_flow_only_on_moving_sprite():
    frames, truth = sprite_video()
    rng = np.random.default_rng(3)
    time = np.arange(len(frames)) / FPS
    confidence = rng.uniform(0.4, 0.9, truth.shape[:2])
    raw_xy = truth + rng.normal(0, 2.0, truth.shape) / confidence[..., None]
    outliers = rng.random(truth.shape[:2]) < 0.08  # the engine sometimes jumps to another place
    raw_xy[outliers] += rng.choice([-1, 1], (outliers.sum(), 2)) * 25.0
    params = SmoothingParams()
    anchors = Anchors(frame=np.array([0]), xy=truth[:1])  # both trackers start from the labelled frame 0
    detection_only = smooth_keypoints(raw_xy, confidence, time, params)[0]
    flow_only = track_points_flow(frames, 0, truth[0])
    flow = measure_flow(frames, raw_xy, confidence, time, anchors, params=params)
    fused = fuse_keypoints(raw_xy, confidence, time, flow, anchors, params=params)[0]
    fused_causal = fuse_keypoints(raw_xy, confidence, time, flow, anchors, params=params, smooth=False)[0]
    errors = {name: rms(xy, truth) for name, xy in (("detection", detection_only), ("flow", flow_only),
                                                    ("fused", fused), ("fused causal", fused_causal))}
    assert errors["fused"] < 0.8 * errors["detection"], errors
    assert errors["fused"] < 0.8 * errors["flow"], errors
    assert errors["fused causal"] < errors["detection"], errors


def test_drifting_flow_track_is_pulled_back_by_detections():
    n = 300
    time = np.arange(n) / FPS
    truth = np.stack([100 + 60 * time, 150 + 20 * np.sin(time)], axis=-1)[:, None, :]
    true_step = np.diff(truth, axis=0, prepend=truth[:1])
    drift = np.array([0.4, -0.3])  # px per frame of flow bias, with a confident (small) fb error
    flow = FlowTrack(displacement=true_step + drift, fb_error=np.full((n, 1), 0.05))
    flow.displacement[0] = np.nan
    rng = np.random.default_rng(1)
    raw_xy = truth + rng.normal(0, 1.0, truth.shape)
    confidence = np.full((n, 1), 0.9)
    confidence[:100] = 0.0  # no detections at first: the flow alone drifts
    anchors = Anchors(frame=np.array([0]), xy=truth[:1])
    late = {}
    for correlation_s in (1.0, 0.0):  # the default (detections count once per second beside the flow), and per frame
        params = SmoothingParams(detection_correlation_s=correlation_s)
        causal = fuse_keypoints(raw_xy, confidence, time, flow, anchors, params, smooth=False)[0]
        drift_at_100 = np.linalg.norm(causal[99, 0] - truth[99, 0])
        assert drift_at_100 > 40  # 100 frames × 0.5 px
        late[correlation_s] = np.linalg.norm(causal[200:, 0] - truth[200:, 0], axis=-1).max()
        smoothed = fuse_keypoints(raw_xy, confidence, time, flow, anchors, params, smooth=True)[0]
        assert np.linalg.norm(smoothed[200:, 0] - truth[200:, 0], axis=-1).max() < late[correlation_s]
    # a biased flow (15 px/s here) is held within a quarter of its 100-frame drift by the default, and to a few
    # pixels when every detection counts (the price of not letting biased detections pull good flow tracks)
    assert late[1.0] < 0.3 * drift_at_100 and late[0.0] < 5.0, late


def test_keypoint_is_occluded_when_flow_and_detection_are_unreliable_then_lost():
    n = 90
    time = np.arange(n) / FPS
    truth = np.stack([50 + 30 * time, 80 + 0 * time], axis=-1)[:, None, :]
    flow = FlowTrack(np.diff(truth, axis=0, prepend=np.nan * truth[:1]), np.full((n, 1), 0.1))
    raw_xy = truth.copy()
    confidence = np.full((n, 1), 0.9)
    confidence[30:] = 0.05  # detection unreliable from frame 30
    flow.fb_error[30:45] = 0.5  # the flow still holds for half a second
    flow.fb_error[45:] = 10.0  # then fails its forward-backward check
    params = SmoothingParams(max_occluded_s=0.5)
    for smooth in (False, True):
        xy, visible = fuse_keypoints(raw_xy, confidence, time, flow, params=params, smooth=smooth)
        assert visible[:45, 0].all() and not visible[45:, 0].any()
        assert np.isfinite(xy[:60, 0]).all()
        lost = time - time[44] > 0.5
        np.testing.assert_array_equal(np.isnan(xy[:, 0, 0]), lost)
        assert np.linalg.norm(xy[40, 0] - truth[40, 0]) < 1.0  # bridged by the flow alone


def test_online_flow_smoother_equals_offline_causal_fusion():
    frames, truth = sprite_video(n_frames=40, seed=5)
    rng = np.random.default_rng(2)
    time = np.arange(len(frames)) / FPS
    confidence = rng.uniform(0.1, 0.9, truth.shape[:2])
    raw_xy = truth + rng.normal(0, 3.0, truth.shape)
    anchors = Anchors(frame=np.array([10]), xy=truth[10:11])
    flow = measure_flow(frames, raw_xy, confidence, time, anchors)
    offline_xy, offline_visible = fuse_keypoints(raw_xy, confidence, time, flow, anchors, smooth=False)
    online = OnlineSmoother(3, flow=FlowParams())
    for t in range(len(frames)):
        xy, visible = online.update(time[t], raw_xy[t], confidence[t], frames[t],
                                    truth[10] if t == 10 else None)
        np.testing.assert_array_equal(xy, offline_xy[t])
        np.testing.assert_array_equal(visible, offline_visible[t])


@pytest.mark.parametrize("method", ["lk", "dis"])
def test_propagate_points_follows_a_shift_with_small_fb_error_and_scales_back(method):
    image = np.repeat(textured((240, 400), 7)[..., None], 3, axis=2)
    shifted = np.roll(image, (3, 5), axis=(0, 1))
    params = FlowParams(method=method, max_side=200)  # flow computed at half size
    points = np.array([[120.0, 80.0], [250.5, 150.25], [np.nan, np.nan]])
    moved, fb = propagate_points(flow_image(image, params), flow_image(shifted, params), points, params,
                                 image.shape[:2])
    np.testing.assert_allclose(moved[:2] - points[:2], [[5, 3], [5, 3]], atol=0.6)
    assert (fb[:2] < 0.5).all() and np.isinf(fb[2]) and np.isnan(moved[2]).all()


def test_a_persistent_detection_bias_does_not_pull_an_accurate_flow_track_off():
    """The tiny model on real footage: detections wrong by the same ~60 px frame after frame, flow accurate.
    Counting such detections once per second (detection_correlation_s) keeps the track near the truth; counting
    every frame as independent pulls it most of the way to the biased detections."""
    n = 200
    time = np.arange(n) / FPS
    truth = np.stack([100 + 40 * time, 150 + 20 * np.sin(time)], axis=-1)[:, None, :]
    rng = np.random.default_rng(2)
    step = np.diff(truth, axis=0, prepend=truth[:1])
    flow = FlowTrack(displacement=step + rng.normal(0, 0.2, step.shape), fb_error=np.full((n, 1), 0.2))
    flow.displacement[0] = np.nan
    raw_xy = truth + np.array([60.0, -20.0]) + rng.normal(0, 5.0, truth.shape)
    confidence = np.full((n, 1), 0.35)
    anchors = Anchors(frame=np.array([0]), xy=truth[:1])
    error = {}
    for correlation_s in (1.0, 0.0):
        params = SmoothingParams(measurement_noise_px=20.0, detection_correlation_s=correlation_s)
        xy = fuse_keypoints(raw_xy, confidence, time, flow, anchors, params)[0]
        error[correlation_s] = np.linalg.norm(xy[-50:, 0] - truth[-50:, 0], axis=-1).mean()
    assert error[1.0] < 15.0 < 0.5 * error[0.0], error
