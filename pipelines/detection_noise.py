"""How far the keypoint filter trusts the engine's detections: by default, as far as the engine was measured to be
right (``ppmtrack track --detection-noise auto``).

The filter (:mod:`tracker.fusion`) weighs a detection of confidence ``c`` by its noise
``measurement_noise_px / c``. A fixed 2 px suits an engine whose detections are good to a couple of pixels; the
tiny model's detections on real footage are off by tens of pixels, and a filter that trusts them 2-px-much pulls
the optical-flow tracks onto wrong places. ``ppmtrack adapt`` measures each keypoint's held-out error (leave one
support frame out, or held-out augmented views with one frame; :mod:`engine.validate`); ``auto`` uses that error,
in the tracked video's pixels, as the keypoint's noise at confidence 1. Measured in docs/performance.md ("Tracking
accuracy: detections, flow, anchors, crops").
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ppmtrack.engine.errors import UsageError

DETECTION_NOISE_AUTO = "auto"
MIN_DETECTION_NOISE_PX = 1.0
# With one support frame, validation scores held-out augmented views of the frame the prompts were trained on: an
# optimistic estimate (the sample: 17 px held out, 53 px on the video; camel, cows, DLC: 0.7-1.1x). Doubling it
# errs on the side of the flow; measured in docs/performance.md.
SINGLE_FRAME_FACTOR = 2.0


def parse_detection_noise(mode: str | float) -> str | float:
    """``"auto"`` or a positive number of pixels (``--detection-noise``, or ``track_video(detection_noise=)``);
    a clear error for anything else, checked before a run opens its video."""
    if isinstance(mode, str) and mode.strip().lower() == DETECTION_NOISE_AUTO:
        return DETECTION_NOISE_AUTO
    try:
        value = float(mode)
    except (TypeError, ValueError):
        raise UsageError(f"detection noise must be 'auto' or a number of pixels, got {mode!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"detection noise must be a positive number of pixels, got {mode!r}")
    return value


def resolve_detection_noise(engine_info: dict, names: list[str], params, mode: str | float,
                            frame_size: tuple[int, int] | None):
    """The filter parameters with the detection noise this run uses, and the record of where it came from.

    Parameters
    ----------
    engine_info : dict
        The engine's ``info`` (its ``validation`` record and the support frames' sizes).
    names : list of str
        Keypoint names, in the engine's order.
    params : SmoothingParams
        The run's filter parameters; their ``measurement_noise_px`` is kept where ``auto`` finds no validation.
    mode : "auto" or float
        ``auto``: each keypoint's held-out error from the engine's validation (scaled from the support frames'
        pixels to the video's; doubled when it came from a single support frame, ``SINGLE_FRAME_FACTOR``), at
        least ``MIN_DETECTION_NOISE_PX``; a number: that many pixels for every keypoint.
    frame_size : (height, width), optional
        The tracked video's frame size.

    Returns
    -------
    params : SmoothingParams
    record : dict
        ``source``, the noise per keypoint (``px``) and, for ``auto``, the scale and validation mode (stored in
        the run summary's settings).
    """
    mode = parse_detection_noise(mode)
    if mode != DETECTION_NOISE_AUTO:
        return dataclasses.replace(params, measurement_noise_px=mode), {"source": "given", "px": mode}
    validation = (engine_info or {}).get("validation") or {}
    overall = validation.get("error_px")
    if overall is None or not math.isfinite(float(overall)):
        why = validation.get("skipped") or ("the engine was adapted without held-out validation (adapt --validate "
                                            "off, or an older ppmtrack)")
        return params, {"source": "smoothing parameters", "px": params.measurement_noise_px,
                        "why_not_validation": why}
    scale = _support_to_video_scale(engine_info, frame_size)
    factor = SINGLE_FRAME_FACTOR if validation.get("weaker") else 1.0
    per_keypoint = validation.get("error_px_per_keypoint") or {}
    values = []
    for name in names:
        error = per_keypoint.get(name)
        error = overall if error is None or not math.isfinite(float(error)) else error
        values.append(max(MIN_DETECTION_NOISE_PX, float(error) * scale * factor))
    record = {"source": "engine validation (held-out error per keypoint)", "validation_mode": validation.get("mode"),
              "scale": round(scale, 4), "px": {n: round(v, 2) for n, v in zip(names, values, strict=True)}}
    if factor != 1.0:
        record["single_frame_factor"] = factor
    return dataclasses.replace(params, measurement_noise_px=tuple(values)), record


def _support_to_video_scale(engine_info: dict, frame_size: tuple[int, int] | None) -> float:
    """Video pixels per support-frame pixel (1 when either size is unknown): the ratio of the frames' geometric
    mean sides."""
    sizes = ((engine_info or {}).get("adaptation") or {}).get("support_image_sizes") or []
    if not sizes or not frame_size:
        return 1.0
    support_side = float(np.median([math.sqrt(h * w) for h, w in sizes]))
    video_side = math.sqrt(frame_size[0] * frame_size[1])
    return video_side / support_side if support_side > 0 else 1.0


def describe_detection_noise(record: dict) -> str:
    """One line on how far detections are trusted, for the run's log."""
    px = record["px"]
    if isinstance(px, dict):
        values = sorted(px.values())
        return (f"detections trusted to their held-out error: {values[0]:.0f}–{values[-1]:.0f} px per keypoint "
                f"(median {float(np.median(values)):.0f} px; {record['validation_mode']})")
    if record["source"] == "given":
        return f"detection noise {px:g} px (given)"
    return f"detection noise {px} px: {record['why_not_validation']}"
