"""``ppmtrack discover``: propose keypoints without labels (engine.discover) on frames spanning the videos.

Writes an annotation ``adapt`` and ``label`` read (points ``kp01…kpK`` at each kept token's peak), a contact
sheet PNG beside it, and with ``--engine`` an engine whose keypoint prompts are the discovered tokens. Every
check that needs no model (arguments, outputs, videos, frames) runs before the model loads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ppmtrack.engine.discover import DiscoverConfig, DiscoveryError, check_keypoints
from ppmtrack.engine.errors import UsageError
from ppmtrack.pipelines.frame_selection import propose_frames
from ppmtrack.pipelines.labels import FrameRef, Labels

logger = logging.getLogger("ppmtrack")

ALIKE_THRESHOLD = 2.0 / 255
"""Frames whose small grey thumbnails differ from each other by less than this (mean absolute difference, on a
0–1 scale) are all alike: a still camera on an empty scene, a frozen stream; discovery would find nothing."""


def keypoint_names(k: int) -> list[str]:
    """``kp01 … kpK`` (two digits, three from 100)."""
    width = max(2, len(str(k)))
    return [f"kp{i + 1:0{width}d}" for i in range(k)]


@dataclass
class ChosenFrames:
    """The frames discovery runs on: where each comes from and its pixels."""

    refs: list[FrameRef]
    images: list[np.ndarray]


def split_frames(lengths: list[int], n: int) -> list[int]:
    """How many of `n` frames each video gets: in proportion to its length, at least one each, at most its length."""
    total = sum(lengths)
    share = [max(1, min(length, round(n * length / total))) for length in lengths]
    while sum(share) > max(n, len(lengths)):
        i = int(np.argmax(share))
        share[i] -= 1
    return share


def choose_frames(videos: list[Path], n: int) -> ChosenFrames:
    """`n` frames spanning the videos (k-means proposals per video, the ones ``ppmtrack label`` proposes).

    Raises DiscoveryError when no frame can be decoded or the frames are all alike."""
    from ppmtrack.pipelines.sources import SourceError
    from ppmtrack.pipelines.video_frames import VideoFrames

    opened = []
    try:
        for path in videos:
            try:
                opened.append(VideoFrames(path))
            except SourceError as exc:
                raise DiscoveryError(str(exc)) from None
        usable = [v for v in opened if v.n_frames > 0]
        if not usable:
            raise DiscoveryError(f"no decodable frames in {', '.join(str(v) for v in videos)}")
        refs, images = [], []
        for video, count in zip(usable, split_frames([v.n_frames for v in usable], n), strict=True):
            try:
                for index in propose_frames(video, count):
                    images.append(video.rgb(index))
                    refs.append(FrameRef(video=video.path, frame=index))
            except Exception as exc:  # noqa: BLE001 (PyAV raises many kinds on broken streams)
                logger.warning("%s: frames could not be decoded (%s); skipped", video.path, exc)
        if not images:
            raise DiscoveryError(f"no decodable frames in {', '.join(str(v) for v in videos)}")
    finally:
        for v in opened:
            v.close()
    if len(images) < 2:
        raise DiscoveryError("discovery needs at least 2 different frames; give a longer video or more videos")
    if frames_alike(images):
        raise DiscoveryError(f"the {len(images)} chosen frames are all alike (nothing moves or changes); "
                             f"discovery needs frames that show the animal in different poses")
    return ChosenFrames(refs, images)


def frames_alike(images: list[np.ndarray], size: int = 32) -> bool:
    """True when every frame's grey thumbnail is within `ALIKE_THRESHOLD` of the first's."""
    thumbs = []
    for image in images:
        h = max(1, round(image.shape[0] * size / image.shape[1]))
        grey = cv2.cvtColor(cv2.resize(image, (size, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        thumbs.append(grey.astype(np.float32) / 255.0)
    if len({t.shape for t in thumbs}) > 1:
        return False
    return all(float(np.abs(t - thumbs[0]).mean()) < ALIKE_THRESHOLD for t in thumbs[1:])


def proposal_labels(chosen: ChosenFrames, keypoints: np.ndarray, names: list[str], source: Path) -> Labels:
    """The discovered points as Labels; a point outside its frame (on the letterbox bars) is not visible."""
    kp = np.array(keypoints, dtype=np.float64)
    for i, image in enumerate(chosen.images):
        h, w = image.shape[:2]
        outside = (kp[i, :, 0] < -0.5) | (kp[i, :, 0] > w - 0.5) | (kp[i, :, 1] < -0.5) | (kp[i, :, 1] > h - 0.5)
        kp[i, outside] = np.nan
    return Labels(names=names, frames=list(chosen.refs), keypoints=kp, source=source)


def contact_sheet(images: list[np.ndarray], keypoints: np.ndarray, names: list[str], titles: list[str],
                  path: Path, columns: int = 6, tile: int = 240) -> Path:
    """A PNG grid of the frames with their points and names (written atomically)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    colours = [tuple(int(255 * c) for c in cmap(k % cmap.N)[:3]) for k in range(len(names))]
    rows = -(-len(images) // columns)
    sheet = np.full((rows * (tile + 18), min(columns, len(images)) * tile, 3), 255, np.uint8)
    for i, (image, pts, title) in enumerate(zip(images, keypoints, titles, strict=True)):
        h, w = image.shape[:2]
        s = tile / max(h, w)
        small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        y0, x0 = (i // columns) * (tile + 18), (i % columns) * tile
        sheet[y0 + 18:y0 + 18 + small.shape[0], x0:x0 + small.shape[1]] = small
        cv2.putText(sheet, title[:38], (x0 + 2, y0 + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        for k, (x, y) in enumerate(pts):
            if not np.isfinite([x, y]).all():
                continue
            c = (round(x0 + (x + 0.5) * s - 0.5), round(y0 + 18 + (y + 0.5) * s - 0.5))
            cv2.circle(sheet, c, 4, colours[k], -1, cv2.LINE_AA)
            cv2.circle(sheet, c, 4, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(sheet, names[k], (c[0] + 5, c[1] - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.33, colours[k], 1,
                        cv2.LINE_AA)
    tmp = path.with_name(f".{path.stem}.partial.png")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    tmp.replace(path)
    return path


def sheet_path(output: Path) -> Path:
    return output.with_name(output.stem + ".png")


def check_outputs(output: Path, engine: Path | None) -> None:
    """Refuse outputs that exist (never overwrite results silently) or that name a folder."""
    from ppmtrack.pipelines.track import prepare_output_dir

    if output.suffix.lower() != ".json":
        raise UsageError(f"-o {output}: name the proposed annotation file, e.g. -o proposed.json")
    targets = [output, sheet_path(output)] + ([engine] if engine else [])
    for path in targets:
        if path.is_dir():
            raise UsageError(f"{path}: is a folder; name a file")
        if path.exists():
            raise UsageError(f"{path} exists; discover does not overwrite results: remove it or name another -o/"
                             f"--engine")
    if engine is not None and engine.resolve() == output.resolve():
        raise UsageError("-o and --engine name the same file")
    for path in targets:
        prepare_output_dir(path.parent if str(path.parent) else Path("."))


def discover_config(args) -> DiscoverConfig:
    values = {name: getattr(args, name) for name in ("candidates", "top_k", "steps", "lr", "resolution", "layers",
                                                     "tta_views", "seed") if getattr(args, name, None) is not None}
    if "candidates" in values and "top_k" not in values:
        values["top_k"] = min(DiscoverConfig.top_k, values["candidates"])
    return DiscoverConfig(**values)


def run_discover(args) -> int:
    """``ppmtrack discover``: everything checkable before the model loads is checked first."""
    from ppmtrack.pipelines.progress import progress_bar

    output = Path(args.output)
    engine_path = Path(args.engine) if args.engine else None
    cfg = discover_config(args)
    check_keypoints(args.keypoints, cfg)
    if args.frames < 2:
        raise UsageError(f"--frames must be at least 2, got {args.frames}")
    check_outputs(output, engine_path)
    chosen = choose_frames([Path(v) for v in args.videos], args.frames)
    names = keypoint_names(args.keypoints)
    print(f"discovering {args.keypoints} keypoints on {len(chosen.images)} frames of {len(args.videos)} "
          f"video{'s' if len(args.videos) > 1 else ''} with model {args.model}")

    from ppmtrack.engine.discover import discover, discovered_engine
    from ppmtrack.engine.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    totals = {"tokens": cfg.steps, "points": len(chosen.images)}
    bar = progress_bar(sum(totals.values()), "encoding frames", "step")
    labels_of = {"tokens": "optimising tokens", "points": "locating points", "foreground": "foreground prompt"}

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        if totals.get(stage) != total:
            totals[stage] = total
            bar.total = sum(totals.values())
        bar.set_description(labels_of.get(stage, stage))
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(1)

    t0 = time.perf_counter()
    try:
        found = discover(model, chosen.images, args.keypoints, cfg, progress=progress)
        engine = None
        if engine_path is not None:
            engine = discovered_engine(model, found, chosen.images, names, progress=progress)
    finally:
        bar.close()
    labels = proposal_labels(chosen, found.keypoints, names, output)
    from ppmtrack.pipelines.io.annotation import write_annotation

    write_annotation(labels, output)
    titles = [f"{Path(r.video).name} #{r.frame}" for r in chosen.refs]
    contact_sheet(chosen.images, labels.keypoints, names, titles, sheet_path(output))
    loss = found.info.get("loss", {}).get("total")
    print(f"discovered {args.keypoints} keypoints in {time.perf_counter() - t0:.1f} s on {found.info['device']}"
          + (f"; loss {loss[0]:.4g} → {loss[1]:.4g} in {cfg.steps} steps" if loss else ""))
    print("chosen in " + ", ".join(f"{n} {f:.0%}" for n, f in zip(names, found.frequency, strict=True))
          + " of the frames' farthest-point sets")
    print(f"wrote {output} and {sheet_path(output)}")
    if engine is not None:
        from ppmtrack.pipelines.anchor_discovery import support_frame_records

        engine.info["support_frames"] = support_frame_records(labels, chosen.images)
        engine.save(engine_path)
        print(f"wrote {engine_path} (track with it directly: ppmtrack track VIDEO --engine {engine_path} -o DIR)")
    print(f"next: name, delete, merge or correct the points with: ppmtrack label {output}")
    return 0


def add_discover_command(commands, parents, formatter) -> None:
    """The ``discover`` subcommand (added to the parser by pipelines/cli.py)."""
    from ppmtrack.engine import DEFAULT_MODEL

    base = DiscoverConfig()
    p = commands.add_parser(
        "discover", parents=parents, formatter_class=formatter,
        help="propose keypoints without labels (StableKeypoints)",
        description="Find K points that the frozen diffusion model locates consistently on frames spanning the "
                    "videos, without any labels (StableKeypoints: text tokens optimised so that their attention "
                    "maps become sharp and follow the image). Writes an annotation with points kp01…kpK that "
                    "'ppmtrack label' opens for naming and correcting and 'ppmtrack adapt' reads, a contact "
                    "sheet PNG beside it and, with --engine, an engine 'ppmtrack track' runs directly. "
                    "See docs/discover.md.",
        epilog="examples:\n  ppmtrack discover session1.mp4 session2.mp4 --keypoints 8 -o proposed.json\n"
               "  ppmtrack discover session1.mp4 --keypoints 6 -o proposed.json --engine discovered.engine\n"
               "  ppmtrack label proposed.json        # name, delete, merge, correct; then adapt on it\n",
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files of one kind of animal")
    p.add_argument("--keypoints", type=int, required=True, metavar="K", help="how many keypoints to propose")
    p.add_argument("--frames", type=int, default=30,
                   help="frames to discover on, chosen to span the videos (k-means, as 'ppmtrack label' proposes)")
    p.add_argument("-o", "--output", required=True, metavar="PROPOSED.json",
                   help="annotation file to write (the contact sheet goes beside it as PROPOSED.png)")
    p.add_argument("--engine", metavar="ENGINE", help="also write an engine with the discovered tokens as prompts")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_PATH",
                   help="diffusion model: a Hugging Face id, a local diffusers folder, or 'tiny' (an untrained "
                        "model for offline tests)")
    p.add_argument("--candidates", type=int,
                   help=f"N, candidate tokens optimised together (default: {base.candidates})")
    p.add_argument("--top-k", type=int, dest="top_k",
                   help=f"k, most localised tokens per frame that the losses and the selection count "
                        f"(default: {base.top_k}; K must not exceed it)")
    p.add_argument("--steps", type=int, help=f"optimisation steps (default: {base.steps})")
    p.add_argument("--lr", type=float, help=f"learning rate (default: {base.lr:g})")
    p.add_argument("--resolution", type=int, help="input size, a multiple of 64 (default: the model's own)")
    p.add_argument("--layers", help=f"cross-attention layers: up, down, mid, all or names (default: {base.layers})")
    p.add_argument("--tta-views", type=int, dest="tta_views",
                   help=f"views averaged when locating the points (default: {base.tta_views})")
    p.add_argument("--seed", type=int, help=f"seed of the tokens and the warps (default: {base.seed})")
    p.set_defaults(run=run_discover)
