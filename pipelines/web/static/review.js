// The reviewer: play the video with its tracks, find weak frames, correct them into the support set.
"use strict";

const TRAIL = 10;
const state = {doc: null, frame: 0, keypoint: 0, index: new Map(), corrections: new Map(), dragging: -1,
  playing: false};
const $ = (id) => document.getElementById(id);
const view = new FrameView($("view"), drawTracks);

// Tracked points of a frame as [k, [x, y] | null, visible]; corrections replace tracked points.
function pointsAt(frame) {
  const t = state.index.get(frame);
  const fixed = state.corrections.get(frame) || {};
  return state.doc.keypoints.map((name, k) => {
    if (name in fixed) return [k, fixed[name], true];
    if (t === undefined) return [k, null, false];
    const x = state.doc.xy[t][2 * k], y = state.doc.xy[t][2 * k + 1];
    return [k, x === null ? null : [x, y], Boolean(state.doc.visible[t][k])];
  });
}

function drawTracks() {
  const t = state.index.get(state.frame);
  if (t !== undefined) {
    state.doc.keypoints.forEach((_, k) => {
      for (let s = Math.max(0, t - TRAIL); s < t; s++) {
        const a = state.doc.xy[s], b = state.doc.xy[s + 1];
        if (a[2 * k] !== null && b[2 * k] !== null) {
          view.line([a[2 * k], a[2 * k + 1]], [b[2 * k], b[2 * k + 1]], colour(k), 1);
        }
      }
    });
  }
  const points = pointsAt(state.frame);
  const byName = Object.fromEntries(points.map(([k, xy]) => [state.doc.keypoints[k], xy]));
  for (const [a, b] of state.doc.skeleton) if (byName[a] && byName[b]) view.line(byName[a], byName[b], "#fff", 1);
  for (const [k, xy, visible] of points) if (xy) view.dot(xy[0], xy[1], colour(k), 5, !visible);
}

function render() {
  $("slider").value = state.frame;
  $("frame").value = state.frame;
  const points = pointsAt(state.frame);
  const t = state.index.get(state.frame);
  const fixed = state.corrections.get(state.frame) || {};
  $("keypoints").innerHTML = "";
  state.doc.keypoints.forEach((name, k) => {
    const conf = t === undefined ? null : state.doc.confidence[t][k];
    const li = document.createElement("li");
    const mark = name in fixed ? " ✎" : points[k][2] ? "" : " (not visible)";
    li.innerHTML = `<span class="swatch" style="background:${colour(k)}"></span>${name}${mark}` +
      `<span class="where">${conf === null ? "–" : conf.toFixed(2)}</span>`;
    li.className = k === state.keypoint ? "current" : "";
    li.onclick = () => { state.keypoint = k; render(); };
    $("keypoints").appendChild(li);
  });
  view.draw();
  drawTimeline();
  drawTrajectory();
}

// The plots span the tracked frames: x(frame) -> canvas x, f(canvas x) -> frame.
function plotFrame(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const first = state.doc.frame[0], n = state.doc.frame[state.doc.frame.length - 1] - first + 1;
  return {ctx, x: (f) => (f - first + 0.5) * canvas.width / n, f: (x) => first + Math.floor(x * n / canvas.width)};
}

function drawSeries(ctx, x, values, y, stroke, width, dash = []) {
  ctx.beginPath();
  ctx.setLineDash(dash);
  let drawing = false;
  state.doc.frame.forEach((f, t) => {
    const v = values(t);
    if (v === null) { drawing = false; return; }
    if (drawing) ctx.lineTo(x(f), y(v)); else ctx.moveTo(x(f), y(v));
    drawing = true;
  });
  ctx.strokeStyle = stroke; ctx.lineWidth = width; ctx.stroke();
  ctx.setLineDash([]);
}

function cursor(ctx, x, canvas) {
  ctx.fillStyle = "#000";
  ctx.fillRect(x(state.frame) - 0.5, 0, 1, canvas.height);
}

function drawTimeline() {
  const canvas = $("timeline");
  const {ctx, x} = plotFrame(canvas);
  const y = (v) => canvas.height - 4 - v * (canvas.height - 8);
  state.doc.keypoints.forEach((_, k) => {
    drawSeries(ctx, x, (t) => state.doc.confidence[t][k], y, colour(k), k === state.keypoint ? 2.5 : 1);
  });
  cursor(ctx, x, canvas);
}

function drawTrajectory() {
  const canvas = $("trajectory");
  const {ctx, x} = plotFrame(canvas);
  const info = state.doc.videos[0], k = state.keypoint;
  const y = (v) => canvas.height - 4 - v * (canvas.height - 8);
  drawSeries(ctx, x, (t) => (state.doc.xy[t][2 * k] === null ? null : state.doc.xy[t][2 * k] / info.width), y,
    colour(k), 1.5);
  drawSeries(ctx, x, (t) => (state.doc.xy[t][2 * k + 1] === null ? null : state.doc.xy[t][2 * k + 1] / info.height),
    y, colour(k), 1.5, [4, 3]);
  cursor(ctx, x, canvas);
}

async function seek(frame) {
  state.frame = Math.max(0, Math.min(state.doc.videos[0].n_frames - 1, frame));
  render();
  const shown = state.frame;
  const drawn = await view.load(`/api/video/0/frame/${shown}.jpg`);
  if (drawn) { render(); document.body.dataset.frame = shown; }
  return drawn;
}

async function play() {
  state.playing = !state.playing;
  $("play").textContent = state.playing ? "❚❚ pause" : "▶ play";
  const period = 1000 / (state.doc.videos[0].fps || 25);
  while (state.playing && state.frame < state.doc.videos[0].n_frames - 1) {
    const started = performance.now();
    await seek(state.frame + 1);
    await new Promise((r) => setTimeout(r, Math.max(0, period - (performance.now() - started))));
  }
  state.playing = false;
  $("play").textContent = "▶ play";
}

function correct(e) {
  const [x, y] = [e.x, e.y].map((v, i) => Math.max(-0.5, Math.min((i ? state.doc.videos[0].height
    : state.doc.videos[0].width) - 0.5, v)));
  const fixed = state.corrections.get(state.frame) || {};
  fixed[state.doc.keypoints[state.keypoint]] = [Math.round(x * 1000) / 1000, Math.round(y * 1000) / 1000];
  state.corrections.set(state.frame, fixed);
  render();
}

$("view").addEventListener("mousedown", (e) => {
  if (e.button !== 0 || e.shiftKey || !$("edit").checked) return;
  const p = view.canvasPoint(e);
  const hit = view.nearest(pointsAt(state.frame).map(([k, xy]) => [k, xy]), p);
  if (hit >= 0) { state.keypoint = hit; state.dragging = hit; render(); return; }
  correct(view.toImage(p));
});
window.addEventListener("mousemove", (e) => {
  if (state.dragging >= 0) correct(view.toImage(view.canvasPoint(e)));
});
window.addEventListener("mouseup", () => { state.dragging = -1; });

for (const id of ["timeline", "trajectory"]) {
  $(id).addEventListener("click", (e) => {
    const r = $(id).getBoundingClientRect();
    seek(plotFrame($(id)).f((e.clientX - r.left) * $(id).width / r.width));
  });
}

async function addFrame() {
  const points = {};
  for (const [k, xy, visible] of pointsAt(state.frame)) points[state.doc.keypoints[k]] = visible ? xy : null;
  try {
    const r = await api("/api/support", {method: "POST", body: {frame: state.frame, points}});
    if (!state.doc.support_frames.includes(state.frame)) state.doc.support_frames.push(state.frame);
    $("support-frames").textContent = state.doc.support_frames.join(", ");
    $("adapt").textContent = r.adapt_command;
    showStatus(`frame ${state.frame} saved to ${r.saved} (${r.frames} frames)`);
  } catch (e) { showStatus(e.message, true); }
}
$("add").onclick = addFrame;

async function followAdapt(r) {
  $("adapt-log").textContent = r.log;
  $("adapt-log").scrollTop = $("adapt-log").scrollHeight;
  if (r.running) {
    $("adapt-state").textContent = "adapting…";
    setTimeout(async () => followAdapt(await api("/api/adapt")), 2000);
  } else if (r.returncode !== null) {
    $("adapt-state").textContent = r.returncode === 0 ? `done: ${r.engine}` : `failed (exit status ${r.returncode})`;
    $("adapt").textContent = r.command;
  }
}
$("run-adapt").onclick = async () => {
  try { followAdapt(await api("/api/adapt", {method: "POST", body: {}})); } catch (e) { showStatus(e.message, true); }
};

window.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" && e.target.type !== "checkbox" && e.target.type !== "range") return;
  const step = e.shiftKey ? 10 : 1;
  if (e.key === " ") play();
  else if (e.key === "ArrowRight") seek(state.frame + step);
  else if (e.key === "ArrowLeft") seek(state.frame - step);
  else if (e.key === "n") { state.keypoint = (state.keypoint + 1) % state.doc.keypoints.length; render(); }
  else if (e.key === "p") {
    state.keypoint = (state.keypoint + state.doc.keypoints.length - 1) % state.doc.keypoints.length; render();
  } else if (e.key === "e") $("edit").checked = !$("edit").checked;
  else if (e.key === "s") addFrame();
  else if (!view.zoomKey(e.key)) return;
  e.preventDefault();
});

$("slider").addEventListener("input", () => seek(Number($("slider").value)));
$("frame").addEventListener("change", () => seek(Number($("frame").value)));
$("play").onclick = play;

function fillChips(container, items, text) {
  for (const item of items) {
    const b = document.createElement("button");
    b.textContent = text(item);
    b.onclick = () => seek(item.start !== undefined ? item.start : item.frame);
    container.appendChild(b);
  }
}

async function start() {
  state.doc = await api("/api/state");
  state.doc.frame.forEach((f, t) => state.index.set(f, t));
  const info = state.doc.videos[0];
  $("slider").max = info.n_frames - 1;
  $("n-frames").textContent = info.n_frames;
  $("source").textContent = `${state.doc.csv} on ${info.name} (${info.width}×${info.height})`;
  $("output").textContent = state.doc.output;
  $("adapt").textContent = state.doc.adapt_command;
  $("support-frames").textContent = state.doc.support_frames.join(", ") || "none yet";
  fillChips($("lowest"), state.doc.lowest, (l) => `${l.frame} (${l.confidence.toFixed(2)})`);
  fillChips($("gaps"), state.doc.gaps, (g) => `${g.keypoint || "untracked"} ${g.start}–${g.end}`);
  if (!state.doc.gaps.length) $("gaps").textContent = "none";
  const fit = () => {
    const main = document.querySelector("main");
    const width = Math.max(320, main.clientWidth - 16);
    $("view").width = width;
    $("view").height = Math.max(240, window.innerHeight - 250);
    $("timeline").width = $("trajectory").width = Math.floor(width / 2) - 6;
    view.fit();
    render();
  };
  fit();
  window.addEventListener("resize", fit);
  const hash = /frame=(\d+)/.exec(location.hash);
  showStatus(`${state.doc.frame.length} tracked frames`);
  const adapting = await api("/api/adapt");
  if (adapting.returncode !== null || adapting.running) followAdapt(adapting);
  await seek(hash ? Number(hash[1]) : state.doc.frame[0]);
}

window.ppm = {state, view, seek, colours: COLOURS};
start().catch((e) => showStatus(e.message, true));
