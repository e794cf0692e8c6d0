"""The ``ppmtrack`` command line: adapt an engine, track videos and streams, evaluate, convert labels.

See docs/cli.md. Errors the user can fix (missing files, unreadable inputs, a folder that cannot be written)
print one line ``ppmtrack: error: …`` and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
LABEL_FORMAT_CHOICES = ("auto", "ppmtrack", "dlc", "sleap", "coco")

logger = logging.getLogger("ppmtrack")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks and shows defaults, except empty ones (None, False)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (so captured output sees it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Formatter(logging.Formatter):
    def format(self, record):
        if record.levelno < logging.WARNING:
            return f"ppmtrack: {record.getMessage()}"
        return f"ppmtrack: {record.levelname.lower()}: {record.getMessage()}"


def _configure_logging(debug: bool) -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


# ---- adaptation -------------------------------------------------------------------------------------------

def _adapt_config(args):
    from ppmtrack.engine import AdaptConfig

    config = AdaptConfig()
    for option in ("steps", "lr", "fg_steps", "loss", "views_per_frame", "resolution", "layers", "seed"):
        value = getattr(args, option)
        if value is not None:
            setattr(config, option, value)
    if args.no_augment:
        config.views_per_frame = 1
    config.augment.flip = args.flip
    return config


def _read_support(args):
    from ppmtrack.pipelines.io.formats import read_labels

    fmt = None if args.format == "auto" else args.format
    return read_labels(args.support, fmt=fmt, individual=args.individual).to_support()


def _adapt_engine(args, model: str):
    """Adapt on ``args.support`` with a progress bar; print losses, time and the support-frame error."""
    from tqdm import tqdm

    from ppmtrack.engine import Engine

    support = _read_support(args)
    config = _adapt_config(args)
    logger.info("adapting %d keypoints on %d support frames with model %s", len(support.names),
                len(support.images), model)
    bar = tqdm(total=config.fg_steps + config.steps, unit="step", file=sys.stderr, desc="preparing views",
               dynamic_ncols=True)

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        bar.set_description(f"{stage} prompt" if stage == "foreground" else "keypoint prompts")
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(1)

    t0 = time.perf_counter()
    try:
        engine = Engine.adapt(support, model=model, config=config, device=args.device, dtype=args.dtype,
                              progress=progress, foreground=args.foreground)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    adaptation = engine.info.get("adaptation", {})
    print(f"adapted {len(support.names)} keypoints on {len(support.images)} support frames "
          f"({adaptation.get('views', '?')} views) in {seconds:.1f} s on {adaptation.get('device', '?')}")
    for label, key in (("foreground loss", "foreground_loss"), ("keypoint loss", "keypoint_loss")):
        losses = adaptation.get(key) or []
        if losses:
            print(f"{label}: {losses[0]:.4g} → {losses[-1]:.4g}")
    print(format_support_error(engine, support))
    return engine


def support_errors(engine, support) -> np.ndarray:
    """(F, K) pixel distance between the engine's prediction and the label on each support frame (NaN where
    the keypoint is not labelled)."""
    predicted = np.full(support.keypoints.shape, np.nan)
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(support.images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():
        for chunk in range(0, len(indices), 8):
            batch = indices[chunk:chunk + 8]
            predicted[batch] = engine.predict(np.stack([support.images[i] for i in batch])).keypoints
    return np.linalg.norm(predicted - support.keypoints, axis=2)


def format_support_error(engine, support) -> str:
    """A table of the mean pixel error per keypoint on the support frames, after adaptation."""
    errors = support_errors(engine, support)
    width = max(len("all keypoints"), *(len(n) for n in support.names))
    lines = ["support-frame error (px, mean over the frames where the keypoint is labelled):"]
    with np.errstate(invalid="ignore"):
        per_keypoint = np.nanmean(np.where(np.isfinite(errors), errors, np.nan), axis=0)
    for name, value in zip(support.names, per_keypoint, strict=True):
        lines.append(f"  {name:<{width}}  {value:8.2f}" if np.isfinite(value) else f"  {name:<{width}}  "
                     "     n/a")
    lines.append(f"  {'all keypoints':<{width}}  {np.nanmean(errors):8.2f}")
    return "\n".join(lines)


def _check_engine_output(path: Path) -> None:
    from ppmtrack.pipelines.track import OutputError, prepare_output_dir

    if path.is_dir():
        raise OutputError(f"{path}: is a folder; name the engine file, e.g. -o {path / 'animal.engine'}")
    prepare_output_dir(path.parent if str(path.parent) else Path("."))


def run_adapt(args) -> int:
    """``ppmtrack adapt``: adapt an engine on a support set and save it."""
    out = Path(args.output)
    _check_engine_output(out)
    engine = _adapt_engine(args, args.model)
    engine.save(out)
    print(f"wrote {out}")
    return 0


# ---- tracking ---------------------------------------------------------------------------------------------

class _StopOnSignal:
    """While active, SIGINT/SIGTERM set ``event`` (the run then closes its outputs); a second one aborts."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        sys.stderr.write(f"\nppmtrack: {signal.Signals(signum).name}: stopping and closing the outputs "
                         "(press Ctrl-C again to abort at once)\n")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _speed_config(args):
    """The inference optimisations asked for on the command line (docs/performance.md)."""
    from ppmtrack.engine.speed import SpeedConfig

    return SpeedConfig(channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs,
                       encoder=args.encoder, reuse_every=args.reuse_every)


def run_track(args) -> int:
    """``ppmtrack track``: track a video file or stream with an engine file or a support set."""
    from ppmtrack.engine import Engine
    from ppmtrack.pipelines.sources import is_live_spec, open_source
    from ppmtrack.pipelines.track import check_output_formats, prepare_output_dir, track_video
    from ppmtrack.tracker import SmoothingParams

    formats = check_output_formats(args.output_format.split(","))
    out_dir = prepare_output_dir(args.output)
    smoothing = SmoothingParams() if args.min_confidence is None else SmoothingParams(
        min_confidence=args.min_confidence)
    if args.support and not is_live_spec(args.video):  # a bad file fails now, not after a long adaptation
        open_source(args.video).close()
    backend = args.backend
    if backend == "auto":
        backend = "onnx" if args.engine and args.engine.endswith(".onnx") else "torch"
    if backend == "onnx":
        if not args.engine:
            raise ValueError("--backend onnx needs --engine FILE.onnx (make one with 'ppmtrack export-onnx')")
        from ppmtrack.engine.onnx_runtime import OnnxEngine

        engine = OnnxEngine.load(args.engine)
        engine_path = Path(args.engine)
    elif args.engine:
        engine = Engine.load(args.engine, model=args.model, device=args.device, dtype=args.dtype,
                             speed=_speed_config(args))
        engine_path = Path(args.engine)
    else:
        from ppmtrack.engine import DEFAULT_MODEL

        engine = _adapt_engine(args, args.model or DEFAULT_MODEL)
        engine_path = out_dir / f"{Path(args.support).stem}.engine"
        engine.save(engine_path)
        print(f"wrote {engine_path} (reuse it with --engine)")
    stop_event = threading.Event()
    if args.animals is not None:
        return _run_track_multi(args, engine, engine_path, out_dir, formats, smoothing, stop_event)
    with _StopOnSignal(stop_event):
        summary = track_video(
            args.video, engine, out_dir, batch_size=args.batch_size, start=args.start, stop=args.stop,
            stride=args.stride, write_video=not args.no_video, output_formats=["csv", *formats],
            smoothing=smoothing, smooth=args.smooth, drop_policy=args.drop_policy,
            progress=not args.quiet, stop_event=stop_event, engine_path=engine_path,
            ffmpeg_options={"rtsp_transport": args.rtsp_transport} if args.rtsp_transport else None,
            max_reconnect_s=args.max_reconnect_s,
        )
    print(summary.describe())
    outputs = [summary.outputs["csv"], summary.outputs["video"], *summary.outputs["formats"],
               summary.outputs["summary"]]
    print("wrote " + ", ".join(str(p) for p in outputs if p))
    return EXIT_INTERRUPTED if summary.status == "interrupted" else 0


def _run_track_multi(args, engine, engine_path, out_dir, formats, smoothing, stop_event) -> int:
    """``ppmtrack track --animals N|auto``: several animals with identities (docs/multi-animal.md)."""
    from ppmtrack.pipelines.track_multi import track_video_multi
    from ppmtrack.tracker.identity import IdentityParams

    if not hasattr(engine, "predict_animals"):
        raise ValueError("--animals needs the torch backend (an .engine file), not an ONNX export")
    identity = IdentityParams(max_absent_s=args.max_absent_s, motion=args.identity_motion)
    with _StopOnSignal(stop_event):
        summary = track_video_multi(
            args.video, engine, out_dir, animals=args.animals, max_animals=args.max_animals,
            batch_size=args.batch_size, start=args.start, stop=args.stop, stride=args.stride,
            write_video=not args.no_video, output_formats=["csv", *formats], smoothing=smoothing,
            identity=identity, progress=not args.quiet, stop_event=stop_event, engine_path=engine_path,
        )
    print(summary.describe())
    ids = summary.identities
    print(f"{len(ids['individuals'])} identities ({', '.join(ids['individuals'])}); "
          f"{ids['uncertain_count']} uncertain identity decisions"
          + (f", first at frames {', '.join(str(d['frame']) for d in ids['uncertain'][:5])}"
             if ids["uncertain"] else ""))
    outputs = [summary.outputs["csv"], summary.outputs["video"], *summary.outputs["formats"],
               summary.outputs["summary"]]
    print("wrote " + ", ".join(str(p) for p in outputs if p))
    return EXIT_INTERRUPTED if summary.status == "interrupted" else 0


# ---- evaluation and conversion ----------------------------------------------------------------------------

def run_eval(args) -> int:
    """``ppmtrack eval``: PCK and pixel error of a tracks CSV against ground-truth labels."""
    from ppmtrack.pipelines.evaluate import evaluate, evaluate_multi, format_multi_report, format_report
    from ppmtrack.pipelines.io.csv import MULTI_HEADER, read_multi_tracks_csv, read_tracks_csv
    from ppmtrack.pipelines.io.formats import read_labels

    truth = read_labels(args.truth)
    with open(args.tracks, encoding="utf-8") as f:
        several = f.readline().rstrip("\r\n") == MULTI_HEADER
    if several:
        result = evaluate_multi(read_multi_tracks_csv(args.tracks), truth, use="raw" if args.raw else "xy")
        sys.stdout.write(format_multi_report(result))
        return 0
    tracks = read_tracks_csv(args.tracks)
    sys.stdout.write(format_report(evaluate(tracks, truth, use="raw" if args.raw else "xy")))
    return 0


def run_convert_labels(args) -> int:
    """``ppmtrack convert-labels``: any supported labels file → ppmtrack annotation JSON."""
    from ppmtrack.pipelines.io.annotation import write_annotation
    from ppmtrack.pipelines.io.formats import read_labels

    labels = read_labels(args.input, fmt=None if args.format == "auto" else args.format,
                         individual=args.individual)
    write_annotation(labels, args.output)
    print(f"wrote {args.output}: {len(labels.frames)} frames, {len(labels.names)} keypoints")
    return 0


def run_export_onnx(args) -> int:
    """``ppmtrack export-onnx``: write an adapted engine as an ONNX model (float32)."""
    from ppmtrack.engine import Engine
    from ppmtrack.engine.onnx_export import export_onnx

    engine = Engine.load(args.engine, model=args.model, device=args.device or "cpu", dtype="float32")
    path = export_onnx(engine, args.output, with_maps=args.with_maps, opset=args.opset,
                       batch_size=args.batch_size, name=Path(args.engine).stem)
    print(f"wrote {path} (input: letterboxed {engine.resolution}x{engine.resolution} images)")
    return 0


def run_pretrain_foreground(args) -> int:
    """``ppmtrack pretrain-foreground``: fit a reusable foreground prompt on annotated images of other animals."""
    from tqdm import tqdm

    from ppmtrack.engine.foreground import pretrain_foreground, save_foreground
    from ppmtrack.pipelines.io.formats import read_labels

    out = Path(args.output)
    _check_engine_output(out)
    fmt = None if args.format == "auto" else args.format
    base = [read_labels(path, fmt=fmt).to_support() for path in args.base]
    config = _adapt_config(args)
    bar = tqdm(total=config.fg_steps, unit="step", file=sys.stderr, desc="foreground prompt", dynamic_ncols=True)

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(1)

    try:
        prompt, result = pretrain_foreground(base, args.model, config, device=args.device, dtype=args.dtype,
                                             progress=progress)
    finally:
        bar.close()
    info = result["info"]
    save_foreground(out, prompt, result["model"], result["config"], info)
    first, last = info["foreground_loss"] or (float("nan"), float("nan"))
    print(f"pre-trained the foreground prompt on {info['frames']} frames of {info['base_sets']} base set(s) "
          f"({info['views']} views) in {info['seconds']:.1f} s; loss {first:.4g} → {last:.4g}")
    print(f"wrote {out} (use it with 'ppmtrack adapt SUPPORT --foreground {out}')")
    return 0


# ---- the parser -------------------------------------------------------------------------------------------

MAIN_EXAMPLES = """\
examples:
  ppmtrack adapt support.json -o lizard.engine
  ppmtrack track session1.mp4 --engine lizard.engine -o results/
  ppmtrack track rtsp://192.168.1.20/stream1 --engine lizard.engine -o live/ --no-video
  ppmtrack eval results/session1.csv truth.json
  ppmtrack convert-labels labeled-data/session1/CollectedData_Alice.csv -o support.json

Run 'ppmtrack COMMAND --help' for a command's options. Documentation: docs/cli.md.
"""
ADAPT_EXAMPLES = """\
examples:
  ppmtrack adapt support.json -o lizard.engine
  ppmtrack adapt labels.v001.slp --individual female -o mouse.engine --steps 300
  ppmtrack adapt samples/support.json --model tiny -o test.engine   # untrained offline test model

Writes the engine file (-o) and prints the loss at the start and end of adaptation, the time taken and
the pixel error of each keypoint on the support frames themselves (a low error there is necessary, not
sufficient: check a few tracked frames too).
"""
TRACK_EXAMPLES = """\
examples:
  ppmtrack track session1.mp4 --engine lizard.engine -o results/
  ppmtrack track session1.mp4 --support support.json -o results/            # adapt first, then track
  ppmtrack track session1.mp4 --engine lizard.engine -o results/ --start 300 --stop 1200 --stride 2
  ppmtrack track session1.mp4 --engine lizard.engine -o results/ --output-format csv,dlc,nwb
  ppmtrack track rtsp://user:pw@10.0.0.5:554/live --engine lizard.engine -o live/

Writes DIR/STEM.csv (tracks), DIR/STEM.mp4 (annotated video) and DIR/STEM.summary.json, where STEM is the
video's file name without extension, or for a URL its host, port and path joined by '_'
(rtsp://user:pw@10.0.0.5:554/live/cam1 -> 10.0.0.5_554_live_cam1). Ctrl-C stops cleanly: every output is
closed and valid and the summary says "interrupted" (exit status 130).
"""


def _adapt_options(with_defaults: bool) -> argparse.ArgumentParser:
    """Options of few-shot adaptation, shared by ``adapt`` and ``track --support``."""
    from ppmtrack.engine import DEFAULT_MODEL, AdaptConfig

    base = AdaptConfig()
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("adaptation")
    group.add_argument("--format", choices=LABEL_FORMAT_CHOICES, default="auto",
                       help="format of the support labels")
    group.add_argument("--individual", metavar="NAME",
                       help="the animal to read from a multi-animal DeepLabCut or SLEAP file")
    if with_defaults:
        group.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_PATH",
                           help="diffusion model: a Hugging Face id, a local diffusers folder, or 'tiny' (an "
                                "untrained model for offline tests)")
    group.add_argument("--steps", type=int,
                       help=f"keypoint prompt optimisation steps (default: {base.steps})")
    group.add_argument("--lr", type=float, help=f"keypoint prompt learning rate (default: {base.lr:g})")
    group.add_argument("--fg-steps", type=int, dest="fg_steps",
                       help=f"foreground prompt optimisation steps (default: {base.fg_steps})")
    group.add_argument("--loss", choices=("ce", "mse"),
                       help="keypoint loss: ce (softmax cross-entropy + map MSE) or mse "
                            f"(default: {base.loss})")
    group.add_argument("--views-per-frame", type=int, dest="views_per_frame",
                       help=f"augmented views per support frame (default: {base.views_per_frame})")
    group.add_argument("--no-augment", action="store_true",
                       help="no augmentation: one view per support frame (overrides --views-per-frame)")
    group.add_argument("--foreground", metavar="FILE",
                       help="start from a foreground prompt pre-trained on a base set ('ppmtrack "
                            "pretrain-foreground'); default: fit it on the support frames")
    group.add_argument("--flip", action="store_true",
                       help="also train on horizontally mirrored views, swapping the annotation's flip_pairs; "
                            "only right when mirrored left and right parts look alike (e.g. top-down views)")
    group.add_argument("--resolution", type=int,
                       help="engine input size, a multiple of 64 (default: the model's own, 512 for SD 1.5)")
    group.add_argument("--layers",
                       help="cross-attention layers used: up, down, mid, all or names "
                            f"(default: {base.layers})")
    group.add_argument("--seed", type=int,
                       help=f"seed of initialisation and augmentation (default: {base.seed})")
    return parent


def _device_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--device", help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    parent.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                        help="model precision (default: float16 on GPU, float32 on CPU)")
    return parent


def _debug_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug messages")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The ``ppmtrack`` argument parser with its subcommands."""
    from ppmtrack.pipelines.sources import STALL_TIMEOUT_S
    from ppmtrack.pipelines.track import OUTPUT_FORMATS, SMOOTH_MODES
    from ppmtrack.tracker import SmoothingParams
    from ppmtrack.tracker.identity import MOTION_MODELS, IdentityParams

    parser = argparse.ArgumentParser(
        prog="ppmtrack", formatter_class=_HelpFormatter, epilog=MAIN_EXAMPLES,
        description="Few-shot keypoint tracking in videos with Prompt Pose Matching on a frozen diffusion "
                    "model.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    debug, device = _debug_option(), _device_options()

    adapt = commands.add_parser(
        "adapt", parents=[_adapt_options(with_defaults=True), device, debug], formatter_class=_HelpFormatter,
        help="adapt an engine to your animal from a few labelled frames", epilog=ADAPT_EXAMPLES,
        description="Learn one prompt per keypoint from a few labelled support frames and save the engine.",
    )
    adapt.add_argument("support", metavar="SUPPORT",
                       help="labelled frames: ppmtrack JSON, DeepLabCut CSV/H5 or labeled-data folder, SLEAP "
                            ".slp, or COCO keypoints JSON")
    adapt.add_argument("-o", "--output", required=True, metavar="ENGINE", help="engine file to write")
    adapt.set_defaults(run=run_adapt)

    track = commands.add_parser(
        "track", parents=[_adapt_options(with_defaults=False), device, debug], formatter_class=_HelpFormatter,
        help="track a video file or live stream", epilog=TRACK_EXAMPLES,
        description="Track keypoints through a video file or a live stream (rtsp, http(s), udp, tcp, srt).",
    )
    track.add_argument("video", metavar="VIDEO_OR_URL", help="video file or stream URL")
    which = track.add_mutually_exclusive_group(required=True)
    which.add_argument("--engine", metavar="ENGINE",
                       help="adapted engine file (from 'ppmtrack adapt'), or an .onnx export of one")
    which.add_argument("--support", metavar="SUPPORT",
                       help="labelled frames to adapt on first (the engine is saved to DIR/<support>.engine)")
    track.add_argument("--model", metavar="ID_OR_PATH",
                       help="diffusion model (default: the engine's own; with --support "
                            "stable-diffusion-v1-5/stable-diffusion-v1-5; 'tiny' for offline tests)")
    track.add_argument("-o", "--output", required=True, metavar="DIR",
                       help="output folder (created if needed)")
    track.add_argument("--batch-size", type=int, default=8, dest="batch_size",
                       help="frames per engine call (live streams take what is waiting, up to this many)")
    track.add_argument("--start", type=int, default=0, help="first frame index")
    track.add_argument("--stop", type=int, help="stop before this frame index (default: the end)")
    track.add_argument("--stride", type=int, default=1, help="track every N-th frame")
    track.add_argument("--no-video", action="store_true", dest="no_video",
                       help="do not write the annotated video")
    track.add_argument("--output-format", default="csv", dest="output_format", metavar="FORMATS",
                       help=f"comma-separated, among {','.join(OUTPUT_FORMATS)} (csv is always written)")
    track.add_argument("--min-confidence", type=float, dest="min_confidence",
                       help="measurements below this confidence are ignored by the smoother and drawn hollow "
                            f"(default: {SmoothingParams().min_confidence:g})")
    track.add_argument("--smooth", choices=SMOOTH_MODES, default="auto",
                       help="auto: forward-backward (RTS) for files, causal for streams")
    track.add_argument("--drop-policy", choices=("drop_oldest", "block"), dest="drop_policy",
                       help="when frames arrive faster than they are tracked: drop the oldest waiting frame "
                            "or make decoding wait (default: drop_oldest for streams, block for files; a "
                            f"stream that blocks longer than {STALL_TIMEOUT_S:g} s may be reported lost)")
    track.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                       help="torch: the engine file with PyTorch; onnx: an 'export-onnx' file with onnxruntime "
                            "(CUDA/TensorRT providers when onnxruntime-gpu is installed); auto: by file ending")
    track.add_argument("--rtsp-transport", choices=("tcp", "udp"), dest="rtsp_transport",
                       help="RTSP transport (default: tcp; some cameras and relays only serve udp)")
    track.add_argument("--max-reconnect-s", type=float, default=60.0, dest="max_reconnect_s",
                       help="give up on a dropped stream after this many seconds without success")
    several = track.add_argument_group("several animals (docs/multi-animal.md)")
    several.add_argument("--animals", metavar="N|auto",
                         help="track N animals with identities (or 'auto': as many as the foreground shows, up to "
                              "--max-animals); the CSV gets an 'individual' column")
    several.add_argument("--max-animals", type=int, default=4, dest="max_animals",
                         help="with --animals auto: most animals at once")
    several.add_argument("--max-absent-s", type=float, default=IdentityParams().max_absent_s, dest="max_absent_s",
                         help="an animal out of view keeps its identity this long for re-identification by "
                              "appearance")
    several.add_argument("--identity-motion", choices=MOTION_MODELS, default="kalman", dest="identity_motion",
                         help="kalman: predicted positions plus appearance; nearest: nearest last position only "
                              "(baseline)")
    speed = track.add_argument_group("speed (docs/performance.md; torch backend)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet blocks and encoder (falls back to eager with a warning)")
    speed.add_argument("--cuda-graphs", action="store_true", dest="cuda_graphs",
                       help="replay the UNet forward as a CUDA graph per batch shape (CUDA only)")
    speed.add_argument("--channels-last", action="store_true", dest="channels_last",
                       help="NHWC memory layout for convolutions")
    speed.add_argument("--encoder", default="vae",
                       help="image encoder: vae (the model's), taesd (AutoencoderTiny weights from the hub or a "
                            "folder: faster, slightly different maps)")
    speed.add_argument("--reuse-every", type=int, default=1, dest="reuse_every", metavar="K",
                       help="recompute the deep UNet features every K frames only (DeepCache-style; 1 = off)")
    track.add_argument("-q", "--quiet", action="store_true", help="no progress bar or status lines")
    track.set_defaults(run=run_track)

    evaluation = commands.add_parser(
        "eval", parents=[debug], formatter_class=_HelpFormatter,
        help="score a tracks CSV against ground truth",
        description="Print PCK@0.05/0.1/0.2 and the pixel error of tracked keypoints against labelled "
                    "frames.",
        epilog="example:\n  ppmtrack eval results/sample.csv samples/truth.json\n",
    )
    evaluation.add_argument("tracks", metavar="TRACKS_CSV", help="tracks CSV written by 'ppmtrack track'")
    evaluation.add_argument("truth", metavar="TRUTH",
                            help="labels of frames of the tracked video (any supported labels format)")
    evaluation.add_argument("--raw", action="store_true",
                            help="score the engine's raw measurements instead of the smoothed positions")
    evaluation.set_defaults(run=run_eval)

    convert = commands.add_parser(
        "convert-labels", parents=[debug], formatter_class=_HelpFormatter,
        help="convert DeepLabCut/SLEAP/COCO labels to a ppmtrack annotation file",
        description="Read labels in any supported format and write them as a ppmtrack annotation JSON.",
        epilog="example:\n  ppmtrack convert-labels labels.v001.slp --individual female -o support.json\n",
    )
    convert.add_argument("input", metavar="INPUT", help="labels file or DeepLabCut labeled-data folder")
    convert.add_argument("-o", "--output", required=True, metavar="OUT.json", help="annotation file to write")
    convert.add_argument("--format", choices=LABEL_FORMAT_CHOICES, default="auto", help="format of INPUT")
    convert.add_argument("--individual", metavar="NAME",
                         help="the animal to read from a multi-animal DeepLabCut or SLEAP file")
    convert.set_defaults(run=run_convert_labels)

    pretrain = commands.add_parser(
        "pretrain-foreground", parents=[_adapt_options(with_defaults=True), device, debug],
        formatter_class=_HelpFormatter, help="pre-train a reusable foreground prompt on a base set",
        description="Fit the foreground prompt P_f on annotated images of other animals (a base set; PPM "
                    "3.1.3). Their keypoints only build FARA pseudo masks, so names may differ between files. "
                    "'ppmtrack adapt --foreground FILE' then starts from it instead of fitting P_f on the "
                    "support frames. Uses --fg-steps, --resolution, --layers, --views-per-frame.",
        epilog="example:\n  ppmtrack pretrain-foreground mice.json rats/CollectedData_Bo.csv -o rodents.fg "
               "--model ./sd15\n",
    )
    pretrain.add_argument("base", nargs="+", metavar="BASE_LABELS", help="annotation files of the base set")
    pretrain.add_argument("-o", "--output", required=True, metavar="FILE", help="foreground-prompt file to write")
    pretrain.set_defaults(run=run_pretrain_foreground)

    if importlib.util.find_spec("ppmtrack.engine.onnx_export") is not None:
        onnx = commands.add_parser(
            "export-onnx", parents=[debug], formatter_class=_HelpFormatter,
            help="export an adapted engine as an ONNX model",
            description="Export an engine (model and prompts, float32) as an ONNX model for other runtimes.",
            epilog="example:\n  ppmtrack export-onnx lizard.engine -o lizard.onnx\n",
        )
        onnx.add_argument("engine", metavar="ENGINE", help="adapted engine file")
        onnx.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="ONNX file to write")
        onnx.add_argument("--model", metavar="ID_OR_PATH", help="diffusion model (default: the engine's own)")
        onnx.add_argument("--device", help="device used while exporting (default: cpu)")
        onnx.add_argument("--with-maps", action="store_true", dest="with_maps",
                          help="also output the keypoint and foreground maps")
        onnx.add_argument("--opset", type=int, default=17, help="ONNX opset")
        onnx.add_argument("--batch-size", type=int, dest="batch_size",
                          help="fixed batch size (default: dynamic)")
        onnx.set_defaults(run=run_export_onnx)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from ppmtrack.engine import EngineFileError, ModelLoadError
    from ppmtrack.pipelines.labels import LabelsError
    from ppmtrack.pipelines.sources import SourceError

    return (ModelLoadError, EngineFileError, LabelsError, SourceError, OSError, ValueError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Run the ``ppmtrack`` command line; returns the exit status (0 ok, 2 error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.debug)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("ppmtrack: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as exc:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"ppmtrack: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
