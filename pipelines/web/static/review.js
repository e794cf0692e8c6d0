// The reviewer: play the video with its tracks, find weak frames, correct them into the support set.
"use strict";

const TRAIL = 10;
const PAGE = 1000;  // video frames per /api/tracks request: the page holds only the pages near what it shows
const KEEP_PAGES = 12;
const state = {doc: null, frame: 0, keypoint: 0, pages: new Map(), corrections: new Map(), dragging: -1,
  playing: false};
const $ = (id) => document.getElementById(id);
const view = new FrameView($("view"), drawTracks);

// Tracks are fetched by page of PAGE video frames; a page is {frames, index: Map(frame -> row), xy, confidence,
// visible} once loaded. Pages far from the current frame are dropped, so memory does not grow with the run.
function loadPage(p) {
  if (p < 0) return Promise.resolve(null);
  let entry = state.pages.get(p);
  if (!entry) {
    entry = {data: null, promise: null};
    entry.promise = api(`/api/tracks?start=${p * PAGE}&stop=${(p + 1) * PAGE}`).then((doc) => {
      doc.index = new Map(doc.frame.map((f, t) => [f, t]));
      entry.data = doc;
      return doc;
    }).catch((e) => { state.pages.delete(p); throw e; });
    state.pages.set(p, entry);
    const here = Math.floor(state.frame / PAGE);
    const far = [...state.pages.keys()].sort((a, b) => Math.abs(b - here) - Math.abs(a - here));
    for (const q of far.slice(0, Math.max(0, state.pages.size - KEEP_PAGES))) state.pages.delete(q);
  }
  return entry.promise;
}

// The pages a frame needs (its own, the one before for the trail), and the next one fetched ahead.
function ensurePages(frame) {
  const p = Math.floor(frame / PAGE);
  loadPage(p + 1).catch(() => {});
  return Promise.all([loadPage(p), loadPage(p - 1)]);
}

function pageData(p) {
  const entry = state.pages.get(p);
  return entry ? entry.data : null;
}

// The tracked row of a frame: {xy, confidence, visible}, or undefined (not tracked, or its page not loaded yet).
function rowAt(frame) {
  const page = pageData(Math.floor(frame / PAGE));
  if (!page) return undefined;
  const t = page.index.get(frame);
  return t === undefined ? undefined : {xy: page.xy[t], confidence: page.confidence[t], visible: page.visible[t]};
}

// The rows of the TRAIL tracked frames before a tracked frame, and its own, in order.
function trailRows(frame) {
  const p = Math.floor(frame / PAGE);
  const here = pageData(p), before = pageData(p - 1);
  if (!here || !here.index.has(frame)) return [];
  const rows = [];
  const take = (page, from, to) => {
    for (let t = from; t <= to; t++) rows.push(page.xy[t]);
  };
  const t = here.index.get(frame);
  const missing = TRAIL - t;
  if (missing > 0 && before && before.frame.length) take(before, Math.max(0, before.frame.length - missing),
    before.frame.length - 1);
  take(here, Math.max(0, t - TRAIL), t);
  return rows;
}

// Tracked points of a frame as [k, [x, y] | null, visible]; corrections replace tracked points.
function pointsAt(frame) {
  const row = rowAt(frame);
  const fixed = state.corrections.get(frame) || {};
  return state.doc.keypoints.map((name, k) => {
    if (name in fixed) return [k, fixed[name], true];
    if (row === undefined) return [k, null, false];
    const x = row.xy[2 * k], y = row.xy[2 * k + 1];
    return [k, x === null ? null : [x, y], Boolean(row.visible[k])];
  });
}

function drawTracks() {
  const trail = trailRows(state.frame);
  state.doc.keypoints.forEach((_, k) => {
    for (let s = 1; s < trail.length; s++) {
      const a = trail[s - 1], b = trail[s];
      if (a[2 * k] !== null && b[2 * k] !== null) {
        view.line([a[2 * k], a[2 * k + 1]], [b[2 * k], b[2 * k + 1]], colour(k), 1);
      }
    }
  });
  const points = pointsAt(state.frame);
  const byName = Object.fromEntries(points.map(([k, xy]) => [state.doc.keypoints[k], xy]));
  for (const [a, b] of state.doc.skeleton) if (byName[a] && byName[b]) view.line(byName[a], byName[b], "#fff", 1);
  for (const [k, xy, visible] of points) if (xy) view.dot(xy[0], xy[1], colour(k), 5, !visible);
}

function render() {
  $("slider").value = state.frame;
  $("frame").value = state.frame;
  const points = pointsAt(state.frame);
  const row = rowAt(state.frame);
  const fixed = state.corrections.get(state.frame) || {};
  $("keypoints").innerHTML = "";
  state.doc.keypoints.forEach((name, k) => {
    const conf = row === undefined ? null : row.confidence[k];
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

// The plots span the tracked frames: x(frame) -> canvas x, f(canvas x) -> frame. They draw the server's binned
// overview of the whole run (lowest confidence, mean position per span of frames), not the tracks themselves.
function plotFrame(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const first = state.doc.tracked.first, n = state.doc.tracked.last - first + 1;
  return {ctx, x: (f) => (f - first + 0.5) * canvas.width / n, f: (x) => first + Math.floor(x * n / canvas.width)};
}

function drawSeries(ctx, x, values, y, stroke, width, dash = []) {
  ctx.beginPath();
  ctx.setLineDash(dash);
  let drawing = false;
  const half = (state.doc.overview.width - 1) / 2;
  state.doc.overview.frame.forEach((start, b) => {
    const f = start + half;
    const v = values(b);
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
    drawSeries(ctx, x, (b) => state.doc.overview.confidence[b][k], y, colour(k), k === state.keypoint ? 2.5 : 1);
  });
  cursor(ctx, x, canvas);
}

function drawTrajectory() {
  const canvas = $("trajectory");
  const {ctx, x} = plotFrame(canvas);
  const info = state.doc.videos[0], k = state.keypoint;
  const y = (v) => canvas.height - 4 - v * (canvas.height - 8);
  const ov = state.doc.overview;
  drawSeries(ctx, x, (b) => (ov.x[b][k] === null ? null : ov.x[b][k] / info.width), y, colour(k), 1.5);
  drawSeries(ctx, x, (b) => (ov.y[b][k] === null ? null : ov.y[b][k] / info.height), y, colour(k), 1.5, [4, 3]);
  cursor(ctx, x, canvas);
}

async function seek(frame) {
  state.frame = Math.max(0, Math.min(state.doc.videos[0].n_frames - 1, frame));
  render();
  const shown = state.frame;
  const pages = ensurePages(shown);  // the tracks of this frame, fetched while the picture loads
  const drawn = await view.load(`/api/video/0/frame/${shown}.jpg`);
  try {
    await pages;
  } catch (e) {
    showStatus("cannot load the tracks: " + e.message, true);
  }
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
  if (state.doc.gaps_total > state.doc.gaps.length) {
    $("gaps").append(` … and ${state.doc.gaps_total - state.doc.gaps.length} more`);
  }
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
  showStatus(`${state.doc.tracked.count} tracked frames`);
  const adapting = await api("/api/adapt");
  if (adapting.returncode !== null || adapting.running) followAdapt(adapting);
  await seek(hash ? Number(hash[1]) : state.doc.tracked.first);
}

window.ppm = {state, view, seek, colours: COLOURS};
start().catch((e) => showStatus(e.message, true));
