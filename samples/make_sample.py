"""Render ppmtrack's bundled sample: a textured, articulated lizard-like animal walking over grass.

Run from the repository root::

    python samples/make_sample.py            # writes samples/sample.mp4, support.json, truth.json
    python samples/make_sample.py --out DIR  # writes the same three files into DIR
    python samples/make_sample.py --pair     # the two-animal sample: pair.mp4, pair_support.json, pair_truth.json
    python samples/make_sample.py --session 2  # a new session of the same animal: session2.mp4, session2_truth.json

Everything is deterministic (fixed seed, closed-form motion). The ground truth comes from the same geometry
that draws the animal, in OpenCV's pixel-centre convention: pixel (0, 0)'s centre is at (0, 0). Polygons are
drawn with sub-pixel precision (``shift`` bits) and anti-aliasing, so keypoints sit exactly where pixels say.

The animal is seen from above. "Left" and "right" are the animal's own sides: for an animal heading to the
right of the image (east), its left side is towards the top of the image.
"""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

SEED = 20240611
WIDTH, HEIGHT = 320, 240
FPS = 30
N_FRAMES = 200
SUPPORT_FRAMES = [10, 62, 104, 176]  # heading right, right and turning, up, left
VIDEO_NAME = "sample.mp4"
PAIR_VIDEO_NAME = "pair.mp4"
INDIVIDUALS = ["lizard1", "lizard2"]
PAIR_SUPPORT_FRAMES = [15, 70, 99, 150]  # apart, approaching, touching side by side, apart again
# Further recordings ("sessions") of the same animal: another random seed (background, textures), lighting, path
# and pose sequence, and no support frame inside — what a lab tracks after labelling its first session.
# lighting: overall gain, RGB tint, and a left-to-right gradient (fraction of the gain)
SESSIONS = {
    2: {"seed": SEED + 2, "n_frames": 150, "start": (230.0, 150.0), "heading0": 4.19,
        "speed": (1.3, 0.6, 95.0, 14.0), "omega": (-0.035, 60.0, 30.0, 0.021, 125.0, 15.0),
        "gait_phase": 1.9, "wave_shift": 23.0, "gain": 0.86, "tint": (1.04, 0.98, 0.9), "gradient": 0.22},
}
# the second lizard's trunk and head are a little darker: two individuals of one species, not two species
PAIR_TINTS = {"body": (160, 88, 52), "head": (190, 150, 95)}

KEYPOINTS = [
    "nose",
    "neck",
    "mid_back",
    "tail_base",
    "tail_mid",
    "tail_tip",
    "front_left_paw",
    "front_right_paw",
    "hind_left_paw",
    "hind_right_paw",
]
SKELETON = [
    ("nose", "neck"),
    ("neck", "mid_back"),
    ("mid_back", "tail_base"),
    ("tail_base", "tail_mid"),
    ("tail_mid", "tail_tip"),
    ("neck", "front_left_paw"),
    ("neck", "front_right_paw"),
    ("tail_base", "hind_left_paw"),
    ("tail_base", "hind_right_paw"),
]
FLIP_PAIRS = [("front_left_paw", "front_right_paw"), ("hind_left_paw", "hind_right_paw")]

# RGB colours of the body parts. The keypoint-bearing markings are saturated and distinct from each other and
# from the grass, so that even random convolutional features can tell them apart.
COLOURS = {
    "body": (185, 105, 60),  # terracotta trunk
    "back_spot": (250, 215, 40),  # yellow diamond on the back: mid_back
    "head": (215, 175, 110),  # tan head
    "collar": (35, 30, 35),  # near-black band at the head/trunk joint: neck
    "nose_spot": (140, 30, 90),  # dark magenta snout tip: nose
    "eye": (15, 15, 15),
    "tail": (100, 110, 150),  # slate-blue tail (tail_base is the trunk/tail boundary)
    "tail_ring": (240, 235, 215),  # cream ring halfway along the tail: tail_mid
    "tail_tip": (210, 40, 35),  # red tuft: tail_tip
    "upper_leg": (150, 85, 50),
    "lower_leg": (170, 120, 80),
    "front_left_paw": (245, 130, 30),  # orange
    "front_right_paw": (60, 160, 235),  # sky blue
    "hind_left_paw": (235, 90, 185),  # pink
    "hind_right_paw": (125, 80, 210),  # violet
}
# Which coloured part each keypoint sits on (its centre), for checks of ground truth against pixels.
KEYPOINT_PART = {
    "nose": "nose_spot",
    "neck": "collar",
    "mid_back": "back_spot",
    "tail_base": None,  # on the boundary between trunk and tail
    "tail_mid": "tail_ring",
    "tail_tip": "tail_tip",
    "front_left_paw": "front_left_paw",
    "front_right_paw": "front_right_paw",
    "hind_left_paw": "hind_left_paw",
    "hind_right_paw": "hind_right_paw",
}

# Geometry, in pixels.
TRUNK_FRONT = 27.0  # mid_back -> neck, along the spine
TRUNK_REAR = 25.0  # mid_back -> tail_base
TRUNK_HALF_WIDTH = 14.0
HEAD_LENGTH = 30.0  # neck -> snout tip
NOSE_BACK = 4.0  # nose keypoint (nose spot centre) sits this far behind the snout tip
TAIL_SEGMENTS = 16
TAIL_SEGMENT = 3.9  # 16 x 3.9 = 62.4 px of tail
PAW_RADIUS = 5.5
FRONT_LEG = (13.0, 12.0)  # upper, lower
HIND_LEG = (15.0, 13.0)
STRIDE = 38.0  # px travelled per gait cycle

SHIFT = 4  # fixed-point bits for cv2 drawing
_ONE = 1 << SHIFT


# ----------------------------------------------------------------------------------------------------------
# motion


def _bump(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-(((t - centre) / width) ** 2))


def trajectory(n: int = N_FRAMES, start=(92.0, 136.0), heading0: float = 0.22, speed=None, omega=None):
    """Root (mid_back) position, heading, turn rate and distance walked, for every frame.

    ``speed`` (px/frame) and ``omega`` (turn rate, rad/frame) are per-frame arrays; by default the single
    sample's walk: a long left U-turn, a short pause late in the clip, then a slight right correction.
    """
    t = np.arange(n, dtype=np.float64)
    if speed is None:
        speed = 1.5 * (1.0 - 0.85 * _bump(t, 150.0, 10.0))  # a short pause late in the clip
    if omega is None:
        # turn rate (rad/frame): a long left U-turn, then a slight right correction
        omega = -0.05 * _bump(t, 92.0, 36.0) + 0.012 * _bump(t, 182.0, 12.0)
    heading = heading0 + np.concatenate([[0.0], np.cumsum(omega[:-1])])
    step = np.stack([np.cos(heading), np.sin(heading)], axis=1) * speed[:, None]
    pos = np.array(start) + np.concatenate([[[0.0, 0.0]], np.cumsum(step[:-1], axis=0)])
    dist = np.concatenate([[0.0], np.cumsum(speed[:-1])])
    return pos, heading, omega, dist


def _rot(a: float) -> np.ndarray:
    return np.array([math.cos(a), math.sin(a)])


def _left(a: float) -> np.ndarray:
    """Unit vector to the animal's left of direction ``a`` (image y points down)."""
    return np.array([math.sin(a), -math.cos(a)])


def pose(i: int, traj, gait_phase: float = 0.0, wave_shift: float = 0.0) -> dict:
    """All geometry of frame ``i``: keypoints and the drawable parts (back to front).

    ``gait_phase`` (rad) and ``wave_shift`` (frames) shift the gait and the tail and head waves: another pose
    sequence on the same path.
    """
    pos, heading, omega, dist = traj
    p0, th, om, d = pos[i], float(heading[i]), float(omega[i]), float(dist[i])
    t = float(i) + wave_shift
    phi = 2 * math.pi * d / STRIDE + gait_phase  # gait phase
    # spine: constant-curvature arc through mid_back; bends into the turn and sways with the gait
    curv = (-16.0 * om + 0.22 * math.sin(phi)) / (TRUNK_FRONT + TRUNK_REAR)  # rad/px
    yaw = 0.10 * math.sin(phi + 0.8)  # girdle rotation

    def spine(length: float, n: int = 16):
        ls = np.linspace(0.0, length, n + 1)
        ang = th + yaw + curv * ls
        dl = length / n
        mids = th + yaw + curv * (ls[:-1] + dl / 2)
        steps = np.stack([np.cos(mids), np.sin(mids)], axis=1) * dl
        pts = p0 + np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)])
        return ls, pts, ang

    lf, front, angf = spine(TRUNK_FRONT)
    lr, rear, angr = spine(-TRUNK_REAR)
    neck, tail_base = front[-1], rear[-1]
    neck_ang, tail_ang = float(angf[-1]), float(angr[-1]) + math.pi  # tail_ang points backwards

    parts = []  # (name, polygon, texture origin, texture angle, pattern)

    # tail: a travelling wave, growing towards the tip, continuing the trunk's curvature
    tpts, a = [tail_base.copy()], tail_ang
    for k in range(TAIL_SEGMENTS):
        a += -curv * TAIL_SEGMENT * 0.7 + (0.035 + 0.012 * k) * math.sin(2 * math.pi * t / 44.0 - 0.45 * k)
        tpts.append(tpts[-1] + _rot(a) * TAIL_SEGMENT)
    tpts = np.array(tpts)
    tail_len = np.arange(TAIL_SEGMENTS + 1) * TAIL_SEGMENT
    tail_w = 7.0 - 4.3 * tail_len / tail_len[-1]
    # start the tail a little inside the trunk so that the joint is closed
    inner = tail_base - _rot(tail_ang) * 3.0
    tail_poly = _stroke(np.vstack([inner, tpts]), np.concatenate([[7.0], tail_w]))
    parts.append(("tail", tail_poly, tail_base, tail_ang, "bands"))
    mid_k = TAIL_SEGMENTS // 2
    tail_mid = tpts[mid_k]
    ring = _stroke(tpts[mid_k - 1 : mid_k + 2], tail_w[mid_k - 1 : mid_k + 2] + 0.6)
    tail_tip = tpts[-1]

    # legs: two segments each, swinging; diagonal pairs in phase (trot)
    legs = {}
    for name, where, side, lengths, tilt, bend, phase in [
        ("front_left_paw", 0.72 * TRUNK_FRONT, 1, FRONT_LEG, 0.12, 0.6, 0.0),
        ("front_right_paw", 0.72 * TRUNK_FRONT, -1, FRONT_LEG, 0.12, 0.6, math.pi),
        ("hind_left_paw", -0.78 * TRUNK_REAR, 1, HIND_LEG, -0.25, -0.6, math.pi),
        ("hind_right_paw", -0.78 * TRUNK_REAR, -1, HIND_LEG, -0.25, -0.6, 0.0),
    ]:
        ls, pts, ang = (lf, front, angf) if where > 0 else (lr, rear, angr)
        j = int(np.argmin(np.abs(ls - where)))
        tang = float(ang[j])
        width = _trunk_half_width(ls[j])
        lateral = tang - side * math.pi / 2  # angle pointing out of the animal's left (side=1) or right
        shoulder = pts[j] + _left(tang) * side * (width - 3.0)
        swing = 0.45 * math.sin(phi + phase)
        upper_ang = lateral + side * (tilt + swing)
        elbow = shoulder + _rot(upper_ang) * lengths[0]
        lower_ang = upper_ang + side * (bend + 0.25 * math.cos(phi + phase))
        paw = elbow + _rot(lower_ang) * lengths[1]
        parts.append(("upper_leg", _stroke(np.array([shoulder, elbow]), np.array([4.2, 3.4]), caps=True),
                      shoulder, upper_ang, "noise"))
        parts.append(("lower_leg", _stroke(np.array([elbow, paw]), np.array([3.3, 2.6]), caps=True),
                      elbow, lower_ang, "noise"))
        parts.append((name, _ellipse(paw, PAW_RADIUS, PAW_RADIUS * 0.9, lower_ang), paw, lower_ang, "noise"))
        legs[name] = paw

    # trunk: spine rear end -> front end, tapering widths
    spine_pts = np.vstack([rear[::-1], front[1:]])
    spine_l = np.concatenate([lr[::-1], lf[1:]])
    parts.append(("body", _stroke(spine_pts, _trunk_half_width(spine_l)), p0, th + yaw, "chevrons"))
    spot_ang = th + yaw
    parts.append(("back_spot", _diamond(p0, 8.0, 5.5, spot_ang), p0, spot_ang, "noise"))

    # head: a teardrop from the neck to the snout, turned by the head-turn angle
    head_turn = 0.32 * math.sin(2 * math.pi * t / 75.0 + 0.6) - 6.0 * om
    head_ang = neck_ang + head_turn
    hx = np.linspace(-4.0, HEAD_LENGTH, 24)
    hw = 9.5 * np.sqrt(np.clip(1 - ((hx - 9.0) / 24.0) ** 2, 0, 1))  # widest 9 px in front of the neck
    hw = np.maximum(hw * (1 - 0.55 * np.clip((hx - 9) / 21, 0, 1)), 2.5)  # tapering to the snout
    axis = neck + np.outer(hx, _rot(head_ang))
    head_poly = _stroke(axis, hw, caps=True)
    parts.append(("head", head_poly, neck, head_ang, "noise"))
    nose = neck + _rot(head_ang) * (HEAD_LENGTH - NOSE_BACK)
    parts.append(("nose_spot", _ellipse(nose, 3.8, 3.4, head_ang), nose, head_ang, "flat"))
    for s in (1, -1):
        eye = neck + _rot(head_ang) * 13.0 + _left(head_ang) * s * 6.2
        parts.append(("eye", _ellipse(eye, 2.4, 2.0, head_ang), eye, head_ang, "flat"))
    collar_ang = (neck_ang + head_ang) / 2
    parts.append(("collar", _ellipse(neck, 3.0, 10.0, collar_ang), neck, collar_ang, "flat"))
    parts.append(("tail_ring", ring, tail_mid, tail_ang, "flat"))
    parts.append(("tail_tip", _ellipse(tail_tip, 4.6, 4.6, 0.0), tail_tip, 0.0, "noise"))

    kps = {
        "nose": nose,
        "neck": neck,
        "mid_back": p0,
        "tail_base": tail_base,
        "tail_mid": tail_mid,
        "tail_tip": tail_tip,
        **legs,
    }
    return {"keypoints": {k: np.asarray(v, dtype=np.float64) for k, v in kps.items()}, "parts": parts}


def _trunk_half_width(l):
    u = np.where(np.asarray(l) >= 0, np.asarray(l) / TRUNK_FRONT, np.asarray(l) / TRUNK_REAR)
    return TRUNK_HALF_WIDTH * np.sqrt(1 - (u / 1.15) ** 2)


# ----------------------------------------------------------------------------------------------------------
# polygons


def _stroke(pts: np.ndarray, half_widths, caps: bool = False) -> np.ndarray:
    """Outline of a polyline thickened by per-vertex half-widths (optionally with round end caps)."""
    pts = np.asarray(pts, dtype=np.float64)
    w = np.broadcast_to(np.asarray(half_widths, dtype=np.float64), (len(pts),))
    tang = np.gradient(pts, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    normal = np.stack([tang[:, 1], -tang[:, 0]], axis=1)
    left, right = pts + normal * w[:, None], pts - normal * w[:, None]
    out = [left]
    if caps:
        a_end = math.atan2(tang[-1, 1], tang[-1, 0])
        arc = np.linspace(-math.pi / 2, math.pi / 2, 9)[1:-1] + a_end
        out.append(pts[-1] + w[-1] * np.stack([np.cos(arc), np.sin(arc)], axis=1)[::-1])
    out.append(right[::-1])
    if caps:
        a0 = math.atan2(tang[0, 1], tang[0, 0]) + math.pi
        arc = np.linspace(-math.pi / 2, math.pi / 2, 9)[1:-1] + a0
        out.append(pts[0] + w[0] * np.stack([np.cos(arc), np.sin(arc)], axis=1)[::-1])
    return np.vstack(out)


def _ellipse(c, a: float, b: float, ang: float, n: int = 36) -> np.ndarray:
    s = np.linspace(0, 2 * math.pi, n, endpoint=False)
    local = np.stack([a * np.cos(s), b * np.sin(s)], axis=1)
    r = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    return np.asarray(c) + local @ r.T


def _diamond(c, a: float, b: float, ang: float) -> np.ndarray:
    local = np.array([[a, 0.0], [0.0, b], [-a, 0.0], [0.0, -b]])
    r = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    return np.asarray(c) + local @ r.T


# ----------------------------------------------------------------------------------------------------------
# rendering


def _periodic_noise(rng: np.random.Generator, size: int, cutoff: float) -> np.ndarray:
    """Smooth, tileable noise in [0, 1] (low-pass filtered white noise, via FFT)."""
    f = np.fft.fftfreq(size)
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    spec = np.fft.fft2(rng.standard_normal((size, size))) * np.exp(-((r / cutoff) ** 2))
    n = np.real(np.fft.ifft2(spec))
    n = (n - n.min()) / (n.max() - n.min())
    return n.astype(np.float32)


def make_background(rng: np.random.Generator) -> np.ndarray:
    """Static grass-and-soil texture, RGB float32 in [0, 255]."""
    size = 512
    low = _periodic_noise(rng, size, 0.012)[:HEIGHT, :WIDTH]
    mid = _periodic_noise(rng, size, 0.08)[:HEIGHT, :WIDTH]
    fine = _periodic_noise(rng, size, 0.35)[:HEIGHT, :WIDTH]
    grass = np.array([88, 122, 58], np.float32)
    soil = np.array([128, 112, 78], np.float32)
    m = np.clip((low - 0.35) * 2.5, 0, 1)[..., None]
    img = grass * (1 - m) + soil * m
    img *= (0.82 + 0.3 * mid + 0.16 * (fine - 0.5))[..., None]
    # grass blades
    layer = img.copy()
    for _ in range(900):
        x, y = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        a = rng.uniform(-math.pi * 0.85, -math.pi * 0.15)
        ln = rng.uniform(3.0, 8.0)
        tone = rng.uniform(0.7, 1.25)
        col = tuple(float(v) for v in np.clip(np.array([80, 128, 50]) * tone, 0, 255))
        p = (int(round(x * _ONE)), int(round(y * _ONE)))
        q = (int(round((x + ln * math.cos(a)) * _ONE)), int(round((y + ln * math.sin(a)) * _ONE)))
        cv2.line(layer, p, q, col, 1, cv2.LINE_AA, SHIFT)
    img = 0.55 * img + 0.45 * layer
    # a few pebbles
    for _ in range(14):
        c = np.array([rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)])
        poly = _ellipse(c, rng.uniform(2.0, 4.5), rng.uniform(1.5, 3.0), rng.uniform(0, math.pi), 20)
        tone = rng.uniform(125, 170)
        colour = (tone, tone * 0.97, tone * 0.92)
        cv2.fillPoly(img, [np.round(poly * _ONE).astype(np.int32)], colour, cv2.LINE_AA, SHIFT)
    return np.clip(img, 0, 255).astype(np.float32)


class Painter:
    """Paints textured, shaded, anti-aliased polygons onto a float RGB canvas."""

    def __init__(self, rng: np.random.Generator):
        self.tex = [_periodic_noise(rng, 128, c) for c in (0.10, 0.25)]

    def mask(self, poly: np.ndarray, box):
        x0, y0, x1, y1 = box
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        pts = np.round((poly - [x0, y0]) * _ONE).astype(np.int32)
        cv2.fillPoly(m, [pts], 255, cv2.LINE_AA, SHIFT)
        return m.astype(np.float32) / 255.0

    @staticmethod
    def box(poly: np.ndarray, pad: int = 3):
        x0, y0 = np.floor(poly.min(axis=0)).astype(int) - pad
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + pad + 1
        return max(x0, 0), max(y0, 0), min(x1, WIDTH), min(y1, HEIGHT)

    def paint(self, canvas, name, poly, origin, ang, pattern, colours=None):
        """Paint one part; ``colours`` overrides :data:`COLOURS` (another individual's tints)."""
        x0, y0, x1, y1 = self.box(poly)
        if x1 <= x0 or y1 <= y0:
            return
        alpha = self.mask(poly, (x0, y0, x1, y1))
        colour = np.array((colours or COLOURS)[name], np.float32)
        if pattern == "flat":
            shade = np.ones_like(alpha)
        else:
            ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dx, dy = xs - origin[0], ys - origin[1]
            c, s = math.cos(ang), math.sin(ang)
            u, v = c * dx + s * dy, -s * dx + c * dy  # texture coordinates move and turn with the part
            off = sum(map(ord, name)) % 97  # a different patch of texture per part
            f32 = np.float32
            n0 = cv2.remap(self.tex[0], f32(u * 2.0 + off), f32(v * 2.0 + off), cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_WRAP)
            n1 = cv2.remap(self.tex[1], f32(u * 3.0 + off), f32(v * 3.0), cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_WRAP)
            shade = 0.92 + 0.18 * (n0 - 0.5) + 0.10 * (n1 - 0.5)
            if pattern == "chevrons":
                shade *= 1.0 - 0.13 * (0.5 + 0.5 * np.cos(2 * np.pi * (u + 0.45 * np.abs(v)) / 7.0))
            elif pattern == "bands":
                shade *= 1.0 - 0.16 * (0.5 + 0.5 * np.cos(2 * np.pi * u / 9.0))
            # rounded look: darker towards the outline
            inside = cv2.GaussianBlur(alpha, (0, 0), 2.0)
            shade *= 0.78 + 0.24 * inside
        col = np.clip(colour * shade[..., None], 0, 255)
        a = alpha[..., None]
        sub = canvas[y0:y1, x0:x1]
        sub *= 1 - a
        sub += col * a

    def shadow(self, canvas, polys, offset=(2.5, 3.5), strength=0.35):
        m = np.zeros((HEIGHT, WIDTH), np.uint8)
        for p in polys:
            cv2.fillPoly(m, [np.round((p + offset) * _ONE).astype(np.int32)], 255, cv2.LINE_AA, SHIFT)
        s = cv2.GaussianBlur(m.astype(np.float32) / 255.0, (0, 0), 2.5)
        canvas *= (1 - strength * s)[..., None]


def render(n_frames: int = N_FRAMES):
    """Yield (RGB uint8 frame, keypoints dict) for every frame."""
    rng = np.random.default_rng(SEED)
    background = make_background(rng)
    painter = Painter(rng)
    traj = trajectory(n_frames)
    for i in range(n_frames):
        p = pose(i, traj)
        canvas = background.copy()
        painter.shadow(canvas, [poly for name, poly, *_ in p["parts"] if name != "eye"])
        for name, poly, origin, ang, pattern in p["parts"]:
            painter.paint(canvas, name, poly, origin, ang, pattern)
        yield np.clip(np.round(canvas), 0, 255).astype(np.uint8), p["keypoints"]


def session_trajectory(session: int):
    """The path of session ``session`` (`SESSIONS`): its own start, heading, speed profile and turns."""
    cfg = SESSIONS[session]
    n = cfg["n_frames"]
    t = np.arange(n, dtype=np.float64)
    v, dip, at, width = cfg["speed"]
    speed = v * (1.0 - dip * _bump(t, at, width))
    a1, c1, w1, a2, c2, w2 = cfg["omega"]
    omega = a1 * _bump(t, c1, w1) + a2 * _bump(t, c2, w2)
    return trajectory(n, start=cfg["start"], heading0=cfg["heading0"], speed=speed, omega=omega)


def render_session(session: int):
    """Yield (RGB uint8 frame, keypoints dict) for every frame of a further session (`SESSIONS`)."""
    cfg = SESSIONS[session]
    rng = np.random.default_rng(cfg["seed"])
    background = make_background(rng)
    painter = Painter(rng)
    traj = session_trajectory(session)
    x = np.linspace(-0.5, 0.5, WIDTH, dtype=np.float32)
    light = cfg["gain"] * (1.0 + cfg["gradient"] * x)[None, :, None] * np.array(cfg["tint"], np.float32)
    for i in range(cfg["n_frames"]):
        p = pose(i, traj, cfg["gait_phase"], cfg["wave_shift"])
        canvas = background.copy()
        painter.shadow(canvas, [poly for name, poly, *_ in p["parts"] if name != "eye"])
        for name, poly, origin, ang, pattern in p["parts"]:
            painter.paint(canvas, name, poly, origin, ang, pattern)
        yield np.clip(np.round(canvas * light), 0, 255).astype(np.uint8), p["keypoints"]


def all_keypoints(n_frames: int = N_FRAMES) -> list[dict[str, np.ndarray]]:
    traj = trajectory(n_frames)
    return [pose(i, traj)["keypoints"] for i in range(n_frames)]


def pair_trajectories(n: int = N_FRAMES):
    """Two lizards on mirrored half-circles that pass each other side by side, close enough to touch.

    Lizard 1 walks a clockwise half-circle (radius 50 px, 0.8 px/frame) on the left, lizard 2 the same
    half-circle turned by 180 degrees about the frame's centre, so around frame 99 they pass head to tail with
    their mid-backs 22 px apart: legs, paws and flanks overlap, and lizard 2 (drawn on top) hides parts of
    lizard 1.
    """
    radius, gap, speed, centre = 50.0, 22.0, 0.8, (160.0, 126.0)
    x1 = centre[0] - gap / 2 - radius
    walk = {"speed": np.full(n, speed), "omega": np.full(n, speed / radius)}
    first = trajectory(n, start=(x1, centre[1] - radius), heading0=0.0, **walk)
    second = trajectory(n, start=(2 * centre[0] - x1, centre[1] + radius), heading0=math.pi, **walk)
    return first, second


def render_pair(n_frames: int = N_FRAMES):
    """Yield (RGB uint8 frame, [keypoints of lizard 1, of lizard 2]) for every frame of the pair sample.

    A keypoint of lizard 1 covered by lizard 2 (which is drawn on top) is NaN: not visible.
    """
    rng = np.random.default_rng(SEED)
    background = make_background(rng)
    painter = Painter(rng)
    trajectories = pair_trajectories(n_frames)
    tinted = {**COLOURS, **PAIR_TINTS}
    for i in range(n_frames):
        poses = [pose(i, tr) for tr in trajectories]
        canvas = background.copy()
        painter.shadow(canvas, [poly for p in poses for name, poly, *_ in p["parts"] if name != "eye"])
        for p, colours in zip(poses, (COLOURS, tinted), strict=True):
            for name, poly, origin, ang, pattern in p["parts"]:
                painter.paint(canvas, name, poly, origin, ang, pattern, colours)
        top = np.zeros((HEIGHT, WIDTH), np.uint8)
        for _, poly, *_ in poses[1]["parts"]:
            cv2.fillPoly(top, [np.round(poly * _ONE).astype(np.int32)], 255, cv2.LINE_8, SHIFT)
        under = dict(poses[0]["keypoints"])
        for name, xy in under.items():
            x, y = int(round(xy[0])), int(round(xy[1]))
            if 0 <= x < WIDTH and 0 <= y < HEIGHT and top[y, x]:
                under[name] = np.full(2, np.nan)
        yield np.clip(np.round(canvas), 0, 255).astype(np.uint8), [under, poses[1]["keypoints"]]


# ----------------------------------------------------------------------------------------------------------
# output


def _points(kp: dict[str, np.ndarray]) -> dict:
    return {n: None if np.isnan(kp[n]).any() else [round(float(kp[n][0]), 3), round(float(kp[n][1]), 3)]
            for n in KEYPOINTS}


def annotation_text(frames: list[int], keypoints: list, video: str = VIDEO_NAME) -> str:
    """ppmtrack annotation JSON (docs/annotation-format.md), one line per frame, coordinates to 3 decimals.

    ``keypoints[f]`` is one animal's dict of keypoints, or a list of dicts (one per individual of
    :data:`INDIVIDUALS`), written as the frame's ``individuals``.
    """
    head = {
        "ppmtrack_annotation": 1,
        "keypoints": KEYPOINTS,
        "skeleton": [list(e) for e in SKELETON],
        "flip_pairs": [list(e) for e in FLIP_PAIRS],
    }
    several = isinstance(keypoints[frames[0]], list)
    if several:
        head["individuals"] = INDIVIDUALS
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + [' "frames": [']
    rows = []
    for f in frames:
        entry = {"video": video, "frame": f}
        if several:
            entry["individuals"] = {name: _points(kp) for name, kp in zip(INDIVIDUALS, keypoints[f], strict=True)}
        else:
            entry["points"] = _points(keypoints[f])
        rows.append("  " + json.dumps(entry))
    lines.append(",\n".join(rows))
    lines += [" ]", "}"]
    return "\n".join(lines) + "\n"


def write_video(path: Path, frames) -> int:
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    n = 0
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(FPS, 1))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "16", "preset": "medium", "threads": "1"}
        else:
            stream.bit_rate = 1_500_000
        for img, _ in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    ap.add_argument("--pair", action="store_true",
                    help="write the two-animal sample instead: pair.mp4, pair_truth.json, pair_support.json")
    ap.add_argument("--session", type=int, choices=sorted(SESSIONS),
                    help="write a further session of the same animal instead (another seed, background, lighting, "
                         "path and poses; no support frame): sessionN.mp4, sessionN_truth.json")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    kps: list = []
    if args.session:
        name = f"session{args.session}.mp4"

        def session_frames():
            for img, kp in render_session(args.session):
                kps.append(kp)
                yield img, kp

        n = write_video(args.out / name, session_frames())
        (args.out / f"session{args.session}_truth.json").write_text(annotation_text(list(range(n)), kps, name))
        print(f"wrote {args.out / name} ({n} frames, {(args.out / name).stat().st_size} bytes), "
              f"session{args.session}_truth.json")
        return 0
    name, prefix, support_frames = ((PAIR_VIDEO_NAME, "pair_", PAIR_SUPPORT_FRAMES) if args.pair
                                    else (VIDEO_NAME, "", SUPPORT_FRAMES))

    def frames():
        for img, kp in (render_pair if args.pair else render)(N_FRAMES):
            kps.append(kp)
            yield img, kp

    n = write_video(args.out / name, frames())
    (args.out / f"{prefix}truth.json").write_text(annotation_text(list(range(n)), kps, name))
    support = [f for f in support_frames if f < n]
    (args.out / f"{prefix}support.json").write_text(annotation_text(support, kps, name))
    size = (args.out / name).stat().st_size
    print(f"wrote {args.out / name} ({n} frames, {WIDTH}x{HEIGHT} @ {FPS} fps, {size} bytes), "
          f"{prefix}truth.json, {prefix}support.json (frames {support})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
