"""Tests of the keypoint filter and smoother in tracker/."""

from __future__ import annotations

import numpy as np
import pytest
from filterpy.common import Q_continuous_white_noise

from ppmtrack.tracker import (
    OnlineSmoother,
    SmoothingParams,
    Tracks,
    filter_keypoints,
    smooth_keypoints,
    smooth_tracks,
)
from ppmtrack.tracker.fusion import transition_3
from ppmtrack.tracker.visibility import lost_mask, measured_mask, time_since_measured, track_segments

FPS = 30.0


def smooth_trajectories(time: np.ndarray, n_keypoints: int, seed: int) -> np.ndarray:
    """(T, K, 2) animal-like paths: a few hundred px wide, speeds of ~100-300 px/s."""
    rng = np.random.default_rng(seed)
    xy = np.full((len(time), n_keypoints, 2), 200.0)
    for frequency_hz, amplitude_px in ((0.2, 80.0), (0.5, 30.0), (1.2, 8.0)):
        phase = rng.uniform(0, 2 * np.pi, (1, n_keypoints, 2))
        xy += amplitude_px * np.sin(2 * np.pi * frequency_hz * time[:, None, None] + phase)
    return xy


def rms_error(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((estimate[mask] - truth[mask]) ** 2, axis=-1))))


@pytest.fixture(scope="module")
def noisy_recording():
    """30 s at 30 fps, 4 keypoints: noise 5 px / confidence, 3% dropouts, 3% low-confidence outliers."""
    rng = np.random.default_rng(1)
    time = np.arange(900) / FPS
    truth = smooth_trajectories(time, 4, seed=2)
    confidence = rng.uniform(0.3, 1.0, truth.shape[:2])
    raw_xy = truth + rng.normal(size=truth.shape) * (5.0 / confidence)[..., None]
    clean = np.ones(truth.shape[:2], dtype=bool)
    dropout = rng.random(truth.shape[:2]) < 0.03
    raw_xy[dropout] = np.nan
    confidence[dropout] = 0.0
    outlier = ~dropout & (rng.random(truth.shape[:2]) < 0.03)
    raw_xy[outlier] += rng.choice([-1, 1], (outlier.sum(), 2)) * 60.0
    confidence[outlier] = 0.1
    clean &= ~dropout & ~outlier
    raw_xy[0] = truth[0]
    confidence[0] = 1.0
    return time, truth, raw_xy, confidence, clean


def test_filter_and_rts_reduce_error_below_raw_noise_rts_best(noisy_recording):
    time, truth, raw_xy, confidence, clean = noisy_recording
    params = SmoothingParams(measurement_noise_px=5.0, process_noise=200.0)
    causal_xy, visible = filter_keypoints(raw_xy, confidence, time, params)
    smoothed_xy, _ = smooth_keypoints(raw_xy, confidence, time, params)
    everywhere = np.ones_like(clean)
    assert not np.isnan(causal_xy).any() and not np.isnan(smoothed_xy).any()
    np.testing.assert_array_equal(visible, clean)
    raw_rms = rms_error(raw_xy, truth, clean)
    causal_rms = rms_error(causal_xy, truth, everywhere)
    smoothed_rms = rms_error(smoothed_xy, truth, everywhere)
    assert causal_rms < 0.7 * raw_rms
    assert smoothed_rms < 0.5 * raw_rms
    assert smoothed_rms < 0.8 * causal_rms


def test_default_params_reduce_error_at_25_and_60_fps():
    for fps in (25.0, 60.0):
        rng = np.random.default_rng(int(fps))
        time = np.arange(int(10 * fps)) / fps
        truth = smooth_trajectories(time, 2, seed=3)
        confidence = rng.uniform(0.4, 1.0, truth.shape[:2])
        raw_xy = truth + rng.normal(size=truth.shape) * (2.0 / confidence)[..., None]
        raw_rms = rms_error(raw_xy, truth, np.ones(truth.shape[:2], dtype=bool))
        for run in (filter_keypoints, smooth_keypoints):
            estimate, _ = run(raw_xy, confidence, time)
            assert rms_error(estimate[5:], truth[5:], np.ones((len(time) - 5, 2), dtype=bool)) < raw_rms


def occluded_straight_walk(occluded_s: float):
    """A keypoint walking at (120, -60) px/s, hidden (confidence 0.05) for occluded_s from t = 2 s."""
    rng = np.random.default_rng(4)
    time = np.arange(int(6 * FPS)) / FPS
    truth = np.stack([100 + 120 * time, 300 - 60 * time], axis=-1)[:, None, :]
    raw_xy = truth + rng.normal(0, 1.0, truth.shape)
    confidence = np.full((len(time), 1), 0.9)
    occluded = (time >= 2.0) & (time < 2.0 + occluded_s)
    confidence[occluded] = 0.05
    raw_xy[occluded] = 0.0
    return time, truth, raw_xy, confidence, occluded


def test_short_occlusion_is_not_visible_and_interpolated():
    time, truth, raw_xy, confidence, occluded = occluded_straight_walk(occluded_s=0.4)
    params = SmoothingParams(measurement_noise_px=1.0)
    travelled_px = np.linalg.norm([120.0, -60.0]) * 0.4
    for run, bound_px in ((filter_keypoints, 0.4 * travelled_px), (smooth_keypoints, 4.0)):
        xy, visible = run(raw_xy, confidence, time, params)
        np.testing.assert_array_equal(visible[:, 0], ~occluded)
        assert not np.isnan(xy).any()
        error = np.linalg.norm(xy[occluded, 0] - truth[occluded, 0], axis=-1)
        assert error.max() < bound_px, run.__name__


def test_long_occlusion_is_lost_after_max_occluded_s_and_recovers():
    time, truth, raw_xy, confidence, occluded = occluded_straight_walk(occluded_s=2.0)
    params = SmoothingParams(measurement_noise_px=1.0, max_occluded_s=0.5)
    last_seen = time[~occluded & (time < 2.0)][-1]
    expected_lost = occluded & (time - last_seen > 0.5)
    assert expected_lost.sum() > 30
    recovered = np.flatnonzero(~occluded & (time > 2.0))[0]
    for run in (filter_keypoints, smooth_keypoints):
        xy, visible = run(raw_xy, confidence, time, params)
        np.testing.assert_array_equal(np.isnan(xy[:, 0, 0]), expected_lost)
        np.testing.assert_array_equal(np.isnan(xy[:, 0, 1]), expected_lost)
        assert not visible[expected_lost].any()
        after = slice(recovered + 15, None)
        assert np.abs(xy[after, 0] - truth[after, 0]).max() < 3.0, run.__name__
    causal_xy, _ = filter_keypoints(raw_xy, confidence, time, params)
    np.testing.assert_array_equal(causal_xy[recovered, 0], raw_xy[recovered, 0])


def test_low_confidence_measurement_pulls_estimate_less():
    time = np.arange(60) / FPS
    raw_xy = np.zeros((60, 1, 2))
    raw_xy[40, 0] = [30.0, 0.0]
    pull_px = {}
    for outlier_confidence in (1.0, 0.25):
        confidence = np.ones((60, 1))
        confidence[40] = outlier_confidence
        causal_xy, visible = filter_keypoints(raw_xy, confidence, time)
        assert visible[40, 0]
        pull_px[outlier_confidence] = causal_xy[40, 0, 0]
    assert pull_px[0.25] < 0.4 * pull_px[1.0]


def test_keypoint_never_measured_is_nan():
    time = np.arange(20) / FPS
    raw_xy = np.zeros((20, 2, 2))
    confidence = np.zeros((20, 2))
    confidence[:, 0] = 1.0
    for run in (filter_keypoints, smooth_keypoints):
        xy, visible = run(raw_xy, confidence, time)
        assert np.isnan(xy[:, 1]).all() and not visible[:, 1].any()
        assert not np.isnan(xy[:, 0]).any()


def test_time_gap_is_predicted_across_without_restart():
    time = np.arange(int(4 * FPS)) / FPS
    time[60:] += 0.5
    truth = np.stack([50 + 100 * time, 80 + 40 * time], axis=-1)[:, None, :]
    rng = np.random.default_rng(5)
    raw_xy = truth + rng.normal(0, 1.0, truth.shape)
    confidence = np.full((len(time), 1), 1.0)
    confidence[60] = 0.0
    params = SmoothingParams(measurement_noise_px=1.0, max_occluded_s=1.0)
    causal_xy, visible = filter_keypoints(raw_xy, confidence, time, params)
    assert not visible[60, 0] and not np.isnan(causal_xy).any()
    assert np.linalg.norm(causal_xy[60, 0] - truth[60, 0]) < 5.0
    smoothed_xy, _ = smooth_keypoints(raw_xy, confidence, time, params)
    assert np.linalg.norm(smoothed_xy[60, 0] - truth[60, 0]) < 2.0


def test_jittered_frame_intervals_are_handled():
    rng = np.random.default_rng(6)
    time = np.cumsum(rng.uniform(0.5, 1.5, 600)) / FPS
    truth = smooth_trajectories(time, 2, seed=7)
    raw_xy = truth + rng.normal(0, 4.0, truth.shape)
    confidence = np.ones(truth.shape[:2])
    params = SmoothingParams(measurement_noise_px=4.0, process_noise=300.0)
    raw_rms = rms_error(raw_xy, truth, confidence > 0)
    for run in (filter_keypoints, smooth_keypoints):
        xy, _ = run(raw_xy, confidence, time, params)
        assert rms_error(xy, truth, confidence > 0) < 0.8 * raw_rms


def test_online_smoother_equals_filter_keypoints(noisy_recording):
    time, _, raw_xy, confidence, _ = noisy_recording
    time = time.copy()
    time[300:] += 2.0
    confidence = confidence.copy()
    confidence[500:560, 1] = 0.0
    confidence[:40, 2] = 0.0
    params = SmoothingParams(measurement_noise_px=5.0, max_occluded_s=0.8)
    batch_xy, batch_visible = filter_keypoints(raw_xy, confidence, time, params)
    assert np.isnan(batch_xy[:, 1]).any() and np.isnan(batch_xy[:40, 2]).all()
    online = OnlineSmoother(raw_xy.shape[1], params)
    for i in range(len(time)):
        xy, visible = online.update(time[i], raw_xy[i], confidence[i])
        np.testing.assert_array_equal(visible, batch_visible[i])
        np.testing.assert_array_equal(xy, batch_xy[i])


def test_online_smoother_rejects_time_going_backwards():
    online = OnlineSmoother(1)
    online.update(1.0, np.zeros((1, 2)), np.ones(1))
    with pytest.raises(ValueError, match="increase"):
        online.update(1.0, np.zeros((1, 2)), np.ones(1))


def test_offline_functions_reject_bad_inputs():
    with pytest.raises(ValueError, match="strictly increasing"):
        smooth_keypoints(np.zeros((3, 1, 2)), np.ones((3, 1)), np.array([0.0, 0.2, 0.1]))
    with pytest.raises(ValueError, match="confidence must have shape"):
        filter_keypoints(np.zeros((3, 1, 2)), np.ones((3, 2)), np.arange(3.0))
    with pytest.raises(ValueError, match="process_noise"):
        SmoothingParams(process_noise=-1.0)


def test_smooth_tracks_fills_xy_and_visible(noisy_recording):
    time, _, raw_xy, confidence, _ = noisy_recording
    n_frames, n_keypoints = confidence.shape
    tracks = Tracks(
        names=[f"point{k}" for k in range(n_keypoints)],
        frame=np.arange(n_frames),
        time=time,
        raw_xy=raw_xy,
        confidence=confidence,
        xy=np.full(raw_xy.shape, np.nan),
        visible=np.zeros(confidence.shape, dtype=bool),
        skeleton=[("point0", "point1")],
    )
    params = SmoothingParams(measurement_noise_px=5.0)
    for causal, run in ((False, smooth_keypoints), (True, filter_keypoints)):
        result = smooth_tracks(tracks, params, causal=causal)
        expected_xy, expected_visible = run(raw_xy, confidence, time, params)
        np.testing.assert_array_equal(result.xy, expected_xy)
        np.testing.assert_array_equal(result.visible, expected_visible)
        assert result.names == tracks.names and result.skeleton == tracks.skeleton
        np.testing.assert_array_equal(result.raw_xy, tracks.raw_xy)
    assert np.isnan(tracks.xy).all() and not tracks.visible.any()


def test_filter_transition_is_constant_velocity_with_filterpy_continuous_white_noise():
    """The transition the filter runs (tracker.fusion.transition_3): filterpy's process noise, constant velocity."""
    for dt in (1 / 60, 1 / 25, 0.7):
        transition, noise = transition_3(dt, 500.0)
        expected = Q_continuous_white_noise(dim=2, dt=dt, spectral_density=500.0**2, block_size=1)
        np.testing.assert_allclose(noise[:2, :2], expected, rtol=1e-12)
        np.testing.assert_array_equal(noise[2], 0.0)  # the previous position is copied, not disturbed
        np.testing.assert_array_equal(noise[:, 2], 0.0)
    transition, _ = transition_3(0.5, 500.0)
    np.testing.assert_allclose(transition @ np.array([1.0, 10.0, 7.0]), [6.0, 10.0, 1.0])  # (pos, vel, previous)


def test_measured_mask_drops_low_confidence_nan_and_zero():
    raw_xy = np.array([[1.0, 2.0], [1.0, np.nan], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    confidence = np.array([0.9, 0.9, 0.1, np.nan, 0.0])
    np.testing.assert_array_equal(measured_mask(raw_xy, confidence, 0.2), [True, False, False, False, False])
    np.testing.assert_array_equal(measured_mask(raw_xy, confidence, 0.0), [True, False, True, False, False])


def test_lost_mask_and_track_segments_agree():
    time = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 1.6, 1.7, 1.8, 1.9, 2.2])
    measured = np.array([False, True, False, False, False, True, False, True, False, False])
    np.testing.assert_allclose(time_since_measured(time, measured[:, None])[[0, 4, 5], 0], [np.inf, 0.3, 0.0])
    lost = lost_mask(time, measured[:, None], max_occluded_s=0.25)[:, 0]
    np.testing.assert_array_equal(lost, [True, False, False, False, True, False, False, False, False, True])
    segments = track_segments(time, measured, max_occluded_s=0.25)
    assert segments == [(1, 4), (5, 9)]
    in_segment = np.zeros(len(time), dtype=bool)
    for start, stop in segments:
        in_segment[start:stop] = True
    np.testing.assert_array_equal(in_segment, ~lost)


def test_tracks_reject_a_misshapen_array_naming_the_dimension():
    t, k = 3, 2
    good = {"names": ["nose", "tail"], "frame": np.arange(t), "time": np.arange(t) / 30.0,
            "raw_xy": np.zeros((t, k, 2)), "confidence": np.ones((t, k)), "xy": np.zeros((t, k, 2)),
            "visible": np.ones((t, k), bool)}
    assert Tracks(**good).xy.shape == (t, k, 2)
    with pytest.raises(ValueError, match=r"Tracks\.xy: dimension 'keypoints' has size 3, expected 2"):
        Tracks(**{**good, "xy": np.zeros((t, 3, 2))})
    with pytest.raises(ValueError, match=r"Tracks\.confidence: dimension 'time' has size 4, expected 3"):
        Tracks(**{**good, "confidence": np.ones((4, k))})
    with pytest.raises(ValueError, match=r"Tracks\.raw_xy must have the 3 dimensions \(time=3, keypoints=2, space=2\)"):
        Tracks(**{**good, "raw_xy": np.zeros(t * k * 2)})  # was reshaped silently before
    empty = Tracks(**{**good, "frame": [], "time": [], "raw_xy": [], "confidence": [], "xy": [], "visible": []})
    assert len(empty) == 0 and empty.raw_xy.shape == (0, k, 2)
