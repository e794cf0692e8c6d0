"""``ppmtrack points``: track arbitrary points of a video with no skeleton and no adaptation.

Each query is a name, a frame index and a position in that frame. The query frames are read first; each point's
descriptor comes from its own frame (:meth:`engine.correspond_points.PointMatcher.describe`); every tracked
frame then finds every point by correspondence in one forward (:class:`engine.correspond_points.PointTracker`).
The run is :func:`pipelines.track.track_video`'s: the correspondence is the detection, fused with optical flow in
the same keypoint filter, and the query frames are anchors (the given positions pin the tracks there, as support
frames do for ``track``), so the outputs, resume, progress and summary are those of ``track``.

Bad queries (a point outside its frame, a frame past the end or not decodable, a duplicate name) are refused
before the model loads.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppmtrack.engine.errors import UsageError

QUERY_COLUMNS = ("name", "frame", "x", "y")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class PointQuery:
    """One point to track: its name, the frame it is given on and its position there (frame pixels)."""

    name: str
    frame: int
    x: float
    y: float


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{where}: {what} {text.strip()!r} is not a number") from None
    if not np.isfinite(value):
        raise UsageError(f"{where}: {what} must be a finite number, got {text.strip()!r}")
    return value


def _frame(text: str, where: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise UsageError(f"{where}: the frame must be a whole number ≥ 0, got {text!r}")
    return int(text)


def parse_at(text: str, names: str | None = None) -> list[PointQuery]:
    """Queries from ``--at "FRAME:x,y;FRAME:x,y"`` and ``--names a,b`` (default names point1, point2, ...)."""
    items = [item.strip() for item in text.split(";") if item.strip()]
    if not items:
        raise UsageError('--at names no point; give "FRAME:x,y", several separated by ";"')
    given = None if names is None else [n.strip() for n in names.split(",")]
    if given is not None and len(given) != len(items):
        raise UsageError(f"--names gives {len(given)} names for {len(items)} points of --at")
    queries = []
    for i, item in enumerate(items):
        where = f"--at point {i + 1} ({item!r})"
        frame, sep, xy = item.partition(":")
        parts = xy.split(",")
        if not sep or len(parts) != 2:
            raise UsageError(f'{where}: expected "FRAME:x,y", e.g. "120:310.5,244"')
        queries.append(PointQuery(given[i] if given else f"point{i + 1}", _frame(frame, where),
                                  _number(parts[0], "x", where), _number(parts[1], "y", where)))
    return check_names(queries)


def read_queries(path: str | Path) -> list[PointQuery]:
    """Queries from a CSV file with the columns name, frame, x, y (a header row with these names is optional)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the query file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text (CSV) file; expected the columns {', '.join(QUERY_COLUMNS)}") from None
    if rows and [c.strip().lower() for c in rows[0]] == list(QUERY_COLUMNS):
        rows = rows[1:]
        first = 2
    else:
        first = 1
    if not rows:
        raise UsageError(f"{path}: no query rows; expected the columns {', '.join(QUERY_COLUMNS)}")
    queries = []
    for n, row in enumerate(rows, start=first):
        where = f"{path} line {n}"
        if len(row) != 4:
            raise UsageError(f"{where}: expected 4 columns ({', '.join(QUERY_COLUMNS)}), got {len(row)}")
        queries.append(PointQuery(row[0].strip(), _frame(row[1], where), _number(row[2], "x", where),
                                  _number(row[3], "y", where)))
    return check_names(queries)


def check_names(queries: list[PointQuery]) -> list[PointQuery]:
    """Names are non-empty, made of letters, digits, ``_ . -`` (they become CSV/DLC column names) and unique."""
    seen = set()
    for q in queries:
        if not _NAME.match(q.name):
            raise UsageError(f"point name {q.name!r}: use letters, digits, '_', '.' or '-' (it becomes a column name)")
        if q.name in seen:
            raise UsageError(f"the point name {q.name!r} is given twice; every point needs its own name")
        seen.add(q.name)
    return queries


def check_queries(queries: list[PointQuery], width: int, height: int, n_frames: int | None) -> None:
    """Every point inside its frame, every frame inside the video (when its length is known)."""
    for q in queries:
        if n_frames is not None and q.frame >= n_frames:
            raise UsageError(f"point {q.name!r}: frame {q.frame} is past the end of the video "
                             f"({n_frames} frames, 0–{n_frames - 1})")
        if not (-0.5 <= q.x <= width - 0.5 and -0.5 <= q.y <= height - 0.5):
            raise UsageError(f"point {q.name!r}: ({q.x:g}, {q.y:g}) lies outside frame {q.frame}, which is "
                             f"{width}×{height} pixels (x 0–{width - 1}, y 0–{height - 1})")


def read_query_frames(video: str | Path, queries: list[PointQuery]) -> dict[int, np.ndarray]:
    """The query frames of a video file; a frame the file does not hold or cannot decode is a UsageError."""
    from ppmtrack.pipelines.sources import read_frames_at

    wanted = sorted({q.frame for q in queries})
    frames = read_frames_at(video, wanted)
    missing = [i for i in wanted if i not in frames]
    if missing:
        names = [q.name for q in queries if q.frame == missing[0]]
        raise UsageError(f"point {names[0]!r}: frame {missing[0]} of {video} cannot be decoded (past the end or "
                         "damaged); give the point on another frame")
    return dict(frames)


def anchor_records(video: str | Path, queries: list[PointQuery], frames: dict[int, np.ndarray]) -> list[dict]:
    """Engine-info ``support_frames`` records (:mod:`pipelines.anchors`) pinning each query on its frame."""
    from ppmtrack.pipelines.anchors import thumbnail

    names = [q.name for q in queries]
    records = []
    for index in sorted(frames):
        points: list = [None] * len(names)
        for q in queries:
            if q.frame == index:
                points[names.index(q.name)] = [round(q.x, 3), round(q.y, 3)]
        records.append({"video": Path(video).name, "frame": int(index), "points": points,
                        "thumbnail": thumbnail(frames[index]).reshape(-1).astype(int).tolist()})
    return records


def build_point_tracker(video: str | Path, queries: list[PointQuery], frames: dict[int, np.ndarray], model,
                        views: int = 4, resolution: int | None = None, prompt=None):
    """The :class:`engine.correspond_points.PointTracker` of these queries (descriptors from their frames)."""
    import torch

    from ppmtrack.engine.correspond import CorrespondConfig
    from ppmtrack.engine.correspond_points import PointMatcher, PointTracker

    matcher = PointMatcher(model, resolution=resolution, prompt=prompt, config=CorrespondConfig(views=views))
    descriptors = torch.zeros(len(queries), 0)
    rows = {}
    for index, image in sorted(frames.items()):
        mine = [i for i, q in enumerate(queries) if q.frame == index]
        desc = matcher.describe(image, np.array([[queries[i].x, queries[i].y] for i in mine]))
        for i, d in zip(mine, desc, strict=True):
            rows[i] = d
    descriptors = torch.stack([rows[i] for i in range(len(queries))])
    info = {"support_frames": anchor_records(video, queries, frames),
            "points": {"queries": [vars(q) for q in queries], "views": views}}
    return PointTracker(matcher, [q.name for q in queries], descriptors, info=info)


def cell_pixels(tracker, width: int, height: int) -> float:
    """Frame pixels per cell of the finest feature grid (the latent's: one cell per ``vae_scale`` input pixels)
    of a letterboxed ``width``×``height`` frame: the scale of the read-out's error."""
    return tracker.model.vae_scale * max(width, height) / tracker.resolution


def track_points(video: str | Path, queries: list[PointQuery], out_dir: str | Path, model, *, views: int = 4,
                 resolution: int | None = None, detection_noise="auto", frames: dict | None = None, **track_kwargs):
    """Track the query points through a video file; returns the run's :class:`pipelines.summary.RunSummary`.

    ``model``: a loaded :class:`engine.models.DiffusionModel`; ``frames``: the query frames when already read
    (:func:`read_query_frames`); ``detection_noise``: "auto" is one feature-grid cell in frame pixels
    (:func:`cell_pixels`), a number is pixels; the other arguments are :func:`pipelines.track.track_video`'s.
    """
    from ppmtrack.pipelines.detection_noise import DETECTION_NOISE_AUTO, parse_detection_noise
    from ppmtrack.pipelines.sources import probe_source
    from ppmtrack.pipelines.track import track_video

    info = probe_source(video)
    check_queries(queries, info.width, info.height, info.n_frames)
    frames = frames if frames is not None else read_query_frames(video, queries)
    tracker = build_point_tracker(video, queries, frames, model, views=views, resolution=resolution)
    noise = parse_detection_noise(detection_noise)
    if noise == DETECTION_NOISE_AUTO:
        noise = round(cell_pixels(tracker, info.width, info.height), 2)
    track_kwargs.setdefault("engine_name", "points")
    return track_video(video, tracker, out_dir, detection_noise=noise, **track_kwargs)


POINTS_EXAMPLES = """examples:
  ppmtrack points mouse.mp4 --at "0:312,240;0:350,228" --names nose,ear -o results/
  ppmtrack points mouse.mp4 --queries points.csv -o results/ --output-format dlc,nwb
      points.csv: one row per point, "name,frame,x,y" (a header row is optional); a point may be given on
      any frame, and points given on different frames are tracked together through the whole video

No engine and no labelling beyond the clicks: each point is found in every frame by matching the diffusion
model's features (SD4Match-style correspondence), fused with optical flow; the frames the points were given on
pin the tracks. Accuracy needs the real model (the default); --model tiny only shows the mechanics.
"""


def add_points_command(commands, parents, formatter) -> None:
    """Register ``ppmtrack points`` on the CLI's subcommands (``parents``: the device and debug options)."""
    from ppmtrack.engine.models import DEFAULT_MODEL
    from ppmtrack.pipelines.track import FLOW_MODES, OUTPUT_FORMATS, SMOOTH_MODES

    points = commands.add_parser(
        "points", parents=parents, formatter_class=formatter, epilog=POINTS_EXAMPLES,
        help="track any points you click, without a skeleton or an engine",
        description="Track arbitrary points of a video file: give each point on one frame; it is found in every "
                    "frame by feature correspondence and fused with optical flow.",
    )
    points.add_argument("video", metavar="VIDEO", help="video file")
    given = points.add_mutually_exclusive_group(required=True)
    given.add_argument("--at", metavar="'FRAME:x,y;...'",
                       help='points as "FRAME:x,y" in frame pixels, several separated by ";"')
    given.add_argument("--queries", metavar="FILE", help="CSV file with one row per point: name,frame,x,y")
    points.add_argument("--names", metavar="A,B,...", help="names of the --at points (default point1, point2, ...)")
    points.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if needed)")
    points.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_PATH",
                        help="diffusion model: hub id or local diffusers folder; 'tiny' for offline tests")
    points.add_argument("--views", type=int, default=4,
                        help="each point's descriptor is averaged over this many views of its frame (the frame and "
                             "random rotations/scalings of it)")
    points.add_argument("--resolution", type=int, metavar="N",
                        help="engine input side, a multiple of 64 (default: the model's, 512 for SD 1.5)")
    points.add_argument("--batch-size", type=int, default=8, dest="batch_size", help="frames per forward")
    points.add_argument("--start", type=int, default=0, help="first frame index")
    points.add_argument("--stop", type=int, help="stop before this frame index (default: the end)")
    points.add_argument("--stride", type=int, default=1, help="track every N-th frame")
    points.add_argument("--flow", choices=FLOW_MODES, default="auto",
                        help="auto: fuse optical flow and pin the query frames; off: correspondence only")
    points.add_argument("--smooth", choices=SMOOTH_MODES, default="auto",
                        help="auto: forward-backward (RTS) smoothing at the end")
    points.add_argument("--detection-noise", default="auto", dest="detection_noise", metavar="auto|PX",
                        help="how far the filter trusts a match, in pixels at confidence 1; auto: one feature-grid "
                             "cell in frame pixels")
    points.add_argument("--no-video", action="store_true", dest="no_video", help="do not write the annotated video")
    points.add_argument("--output-format", default="csv", dest="output_format", metavar="FORMATS",
                        help=f"comma-separated, among {','.join(OUTPUT_FORMATS)} (csv is always written)")
    points.add_argument("--overwrite", action="store_true", help="redo complete results of this video in DIR")
    points.add_argument("--resume", action="store_true", help="continue an interrupted run of this video in DIR")
    points.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    points.set_defaults(run=run_points)


def run_points(args) -> int:
    """``ppmtrack points``: everything about the queries is checked before the model loads."""
    from ppmtrack.engine.models import load_model
    from ppmtrack.pipelines.detection_noise import parse_detection_noise
    from ppmtrack.pipelines.sources import is_live_spec, probe_source
    from ppmtrack.pipelines.track import check_output_formats, check_selection, prepare_output_dir

    formats = check_output_formats(args.output_format.split(","))
    noise = parse_detection_noise(args.detection_noise)
    if args.views < 1:
        raise UsageError(f"--views must be at least 1, got {args.views}")
    if args.resolution is not None and (args.resolution < 64 or args.resolution % 64):
        raise UsageError(f"--resolution must be a multiple of 64, got {args.resolution}")
    if args.names is not None and args.at is None:
        raise UsageError("--names names the points of --at; a --queries file names its points itself")
    queries = parse_at(args.at, args.names) if args.at is not None else read_queries(args.queries)
    if is_live_spec(args.video):
        raise UsageError("ppmtrack points tracks video files; the query frames must be read from the file")
    info = probe_source(args.video)
    check_queries(queries, info.width, info.height, info.n_frames)
    check_selection(args.start, args.stop, args.stride, info.n_frames)
    frames = read_query_frames(args.video, queries)
    out_dir = prepare_output_dir(args.output)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    summary = track_points(args.video, queries, out_dir, model, views=args.views, resolution=args.resolution,
                           detection_noise=noise, frames=frames, batch_size=args.batch_size, start=args.start,
                           stop=args.stop, stride=args.stride, write_video=not args.no_video,
                           output_formats=["csv", *formats], smooth=args.smooth, flow=args.flow,
                           resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    print(summary.describe())
    outputs = [summary.outputs["csv"], summary.outputs["video"], *summary.outputs["formats"],
               summary.outputs["summary"]]
    print("wrote " + ", ".join(str(p) for p in outputs if p))
    return 130 if summary.status == "interrupted" else 0
