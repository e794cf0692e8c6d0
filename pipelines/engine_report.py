"""What an engine file holds, as text for people: ``ppmtrack info ENGINE`` and the validation table of ``adapt``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ppmtrack.engine.engine_file import file_sha256, read_engine_file


def _json_safe(value):
    """NaN and infinities → None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def engine_description(path: str | Path) -> dict:
    """Everything ``ppmtrack info --json`` prints: the file's path, size and SHA-256, and its metadata (no model
    is loaded; the prompts' tensors are described by shape only; NaN becomes null)."""
    tensors, meta = read_engine_file(path)
    return {"path": str(path), "bytes": Path(path).stat().st_size, "sha256": file_sha256(path),
            "tensors": {k: list(v.shape) for k, v in tensors.items()}, "meta": _json_safe(meta)}


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_validation(validation: dict, names: list[str] | None = None) -> str:
    """The held-out accuracy of an adaptation: settings tried, the choice, per-keypoint error (in the order of
    `names`, the engine's keypoints: the engine file stores the errors by name, sorted), advice."""
    if not validation:
        return "validation: none (adapted with --validate off, or by a ppmtrack without validation)"
    if "skipped" in validation:
        return f"validation: skipped — {validation['skipped']}"
    held = validation["held_out"]
    what = (f"leave-one-frame-out, {len(held)} of {validation['support_frames']} support frames held out in turn"
            if validation["mode"] == "leave-one-frame-out"
            else f"{held[0]} (one support frame: weaker than leave-one-frame-out)")
    lines = [f"validation ({validation['family']} model): {what}; validation runs of {validation['run_steps']} "
             f"steps ({validation['run_fraction']:g} of the final length)",
             f"  {'lr':>8}  {'steps':>5}  {'PCK@0.1':>7}  {'PCK@0.2':>7}  {'error px':>8}"]
    chosen = validation["chosen"]
    for entry in validation["grid"]:
        mark = "*" if entry["lr"] == chosen["lr"] and entry["steps"] == chosen["steps"] else " "
        lines.append(f"{mark} {entry['lr']:>8g}  {entry['steps']:>5d}  {_number(entry['pck@0.1']):>7}  "
                     f"{_number(entry['pck@0.2']):>7}  {_number(entry['error_px'], 1):>8}")
    lines.append(f"chosen (*): lr {chosen['lr']:g}, {chosen['steps']} steps; held-out PCK@0.1 "
                 f"{_number(validation['pck@0.1'])}, PCK@0.2 {_number(validation['pck@0.2'])}, error "
                 f"{_number(validation['error_px'], 1)} px over {validation['keypoints_scored']} keypoints")
    per_keypoint = validation.get("error_px_per_keypoint", {})
    if names and set(names) == set(per_keypoint):
        per_keypoint = {name: per_keypoint[name] for name in names}
    if per_keypoint:
        width = max(len(n) for n in per_keypoint)
        lines.append("held-out error per keypoint (px, support-frame pixels):")
        lines += [f"  {name:<{width}}  {_number(value, 1):>8}" for name, value in per_keypoint.items()]
    for text in validation.get("advice", []):
        lines.append(f"advice: {text}")
    return "\n".join(lines)


def _loss_pair(values) -> str:
    return f"{values[0]:.4g} → {values[-1]:.4g}" if values else "n/a"


def format_engine_info(description: dict) -> str:
    """Plain-text ``ppmtrack info``: names, skeleton, model, input, adaptation, validation, support, crop, file."""
    meta = description["meta"]
    info = meta.get("info", {})
    config = meta.get("adapt_config", {})
    model = meta.get("model", {})
    lines = [f"engine: {description['path']} ({description['bytes']} bytes, ppmtrack "
             f"{meta.get('ppmtrack_version', '?')})",
             f"sha256: {description['sha256']}",
             f"keypoints ({len(meta['keypoints'])}): {', '.join(meta['keypoints'])}",
             "skeleton: " + (", ".join(f"{a}-{b}" for a, b in meta.get("skeleton", [])) or "none")]
    if meta.get("flip_pairs"):
        lines.append("flip pairs: " + ", ".join(f"{a}/{b}" for a, b in meta["flip_pairs"]))
    revision = f" (revision {model['revision']})" if model.get("revision") else ""
    lines += [f"model: {model.get('name', '?')}{revision}",
              f"input: {meta.get('resolution', '?')}×{meta.get('resolution', '?')}, timestep "
              f"{meta.get('timestep', '?')}, {len(meta.get('layers', []))} cross-attention layers: "
              f"{', '.join(meta.get('layers', []))}"]
    adaptation = info.get("adaptation", {})
    lines.append(f"adaptation: lr {config.get('lr', '?')}, {config.get('steps', '?')} keypoint steps, loss "
                 f"{config.get('loss', '?')}, batch {config.get('batch_size', '?')}, "
                 f"{config.get('views_per_frame', '?')} views per frame, seed {config.get('seed', '?')}")
    defaults = info.get("defaults")
    if defaults:
        why = {"given": "given by the user", "validation": "chosen by validation"}.get(defaults.get("lr_from"))
        why = why or f"the {defaults.get('family', '?')} family's default: {defaults.get('why', '')}"
        lines.append(f"  keypoint learning rate {defaults.get('lr', '?'):g}: {why}")
    if adaptation:
        floor = adaptation.get("foreground_loss_floor")
        lines += [f"  {adaptation.get('support_frames', '?')} support frames, {adaptation.get('views', '?')} views, "
                  f"{adaptation.get('seconds', '?')} s on {adaptation.get('device', '?')} "
                  f"({adaptation.get('dtype', '?')})",
                  f"  foreground prompt: {adaptation.get('foreground_prompt', '?')}; "
                  f"{adaptation.get('foreground_steps', config.get('fg_steps', '?'))} steps (at most "
                  f"{config.get('fg_steps', '?')}), loss {_loss_pair(adaptation.get('foreground_loss'))}"
                  + (f", floor {floor:.4g}" if floor is not None else ""),
                  f"  keypoint loss: {_loss_pair(adaptation.get('keypoint_loss'))} (floor "
                  f"{adaptation.get('keypoint_loss_floor', 0):.4g})"]
    lines.append(format_validation(info.get("validation", {}), meta["keypoints"]))
    records = info.get("support_frames", [])
    if records:
        placed = [r for r in records if r.get("video") is not None and r.get("frame") is not None]
        if placed:
            lines.append(f"support frames in videos ({len(placed)}): "
                         + ", ".join(f"{r['video']}#{r['frame']}" for r in placed))
        if len(placed) < len(records):
            lines.append(f"support frames found by content when tracked ({len(records) - len(placed)}): "
                         + ", ".join(str(r.get("label", "?")) for r in records if r not in placed))
    if "crop" in info:
        lines.append("crop policy: " + json.dumps(info["crop"], sort_keys=True))
    if "support_key" in info:
        lines.append(f"adapted by 'track --support' (support key {info['support_key'][:12]}…)")
    return "\n".join(lines)
