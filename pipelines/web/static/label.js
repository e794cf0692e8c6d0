// The labeller: place keypoints on chosen frames; every change is saved to the annotation file at once.
"use strict";

const state = {doc: null, video: 0, frame: 0, keypoint: 0, labels: new Map(), proposals: {}, dragging: -1, conflict: null,
  suggestions: new Map()};  // suggestions: key → {name: [x, y]}, shown hollow until accepted
let saving = Promise.resolve();
const $ = (id) => document.getElementById(id);
const view = new FrameView($("view"), drawPoints);

const key = (video, frame) => `${video}:${frame}`;
const currentLabel = () => state.labels.get(key(state.video, state.frame));
const videoInfo = () => state.doc.videos[state.video];

function pointsOf(label) {
  return state.doc.keypoints.map((name, k) => [k, label ? label.points[name] || null : null]);
}

function suggestedPoints() {
  // suggestions of this frame for keypoints it has no label for: [k, [x, y] or null]
  const suggested = state.suggestions.get(key(state.video, state.frame)) || {};
  const label = currentLabel();
  return state.doc.keypoints.map((name, k) => [k, label && label.points[name] ? null : suggested[name] || null]);
}

function drawPoints() {
  for (const [k, xy] of suggestedPoints()) if (xy) view.dot(xy[0], xy[1], colour(k), 6, true);
  const label = currentLabel();
  if (!label) return;
  const byName = label.points;
  for (const [a, b] of state.doc.skeleton) {
    if (byName[a] && byName[b]) view.line(byName[a], byName[b], "rgba(255,255,255,0.6)", 1.5);
  }
  for (const [k, xy] of pointsOf(label)) {
    if (xy) view.dot(xy[0], xy[1], colour(k), k === state.keypoint ? 6 : 4);
  }
}

function render() {
  const info = videoInfo();
  $("slider").max = info.n_frames - 1;
  $("slider").value = state.frame;
  $("frame").value = state.frame;
  $("n-frames").textContent = info.n_frames;
  const label = currentLabel();
  $("keypoints").innerHTML = "";
  state.doc.keypoints.forEach((name, k) => {
    const li = document.createElement("li");
    const xy = label ? label.points[name] : undefined;
    const where = !label ? "" : xy ? `${xy[0].toFixed(1)}, ${xy[1].toFixed(1)}` : "not visible";
    li.innerHTML = `<span class="swatch" style="background:${colour(k)}"></span>${name}<span class="where">${where}</span>`;
    li.className = k === state.keypoint ? "current" : "";
    li.onclick = () => { state.keypoint = k; render(); };
    $("keypoints").appendChild(li);
  });
  chips($("labelled"), [...state.labels.values()].filter((l) => l.video === state.video).map((l) => l.frame));
  chips($("proposals"), state.proposals[state.video] || []);
  view.draw();
}

function chips(container, frames) {
  container.innerHTML = "";
  for (const f of frames) {
    const b = document.createElement("button");
    b.textContent = f;
    b.className = state.labels.has(key(state.video, f)) ? "done" : "";
    if (f === state.frame) b.style.fontWeight = "bold";
    b.onclick = () => goto(f);
    container.appendChild(b);
  }
}

async function goto(frame) {
  const n = videoInfo().n_frames;
  state.frame = Math.max(0, Math.min(n - 1, frame));
  render();
  const shown = state.frame;
  if (await view.load(`/api/video/${state.video}/frame/${shown}.jpg`)) document.body.dataset.frame = shown;
}

function save() {
  const doc = {
    keypoints: state.doc.keypoints,
    skeleton: state.doc.skeleton,
    frames: [...state.labels.values()],
  };
  // the revision this page loaded or last saved: the server refuses the write (409) when the file changed since,
  // e.g. saved from another tab, instead of replacing labels this page has never seen
  saving = saving.then(() => {
    if (state.conflict) throw state.conflict;
    return api("/api/labels", {method: "PUT", body: Object.assign({revision: state.doc.revision}, doc)});
  })
    .then((r) => {
      state.doc.revision = r.revision;
      showStatus(`saved ${r.frames} frames · ${new Date().toLocaleTimeString()}`);
    })
    .catch((e) => {
      if (e.conflict) state.conflict = e;
      showStatus("NOT SAVED: " + e.message + (e.conflict ? " (reload the page: F5)" : ""), true);
    });
  return saving;
}

function ensureLabel() {
  let label = currentLabel();
  if (!label) {
    label = {video: state.video, frame: state.frame, points: {}};
    for (const name of state.doc.keypoints) label.points[name] = null;
    state.labels.set(key(state.video, state.frame), label);
  }
  return label;
}

function nextKeypoint(step = 1) {
  const n = state.doc.keypoints.length;
  state.keypoint = (state.keypoint + step + n) % n;
  render();
}

function clampToImage(p) {
  const info = videoInfo();
  return [Math.max(-0.5, Math.min(info.width - 0.5, p.x)), Math.max(-0.5, Math.min(info.height - 0.5, p.y))];
}

const round3 = (v) => Math.round(v * 1000) / 1000;

$("view").addEventListener("mousedown", (e) => {
  if (e.button !== 0 || e.shiftKey || !state.doc.keypoints.length) return;
  const p = view.canvasPoint(e);
  const hit = view.nearest(pointsOf(currentLabel()), p);
  if (hit >= 0) { state.dragging = hit; state.keypoint = hit; render(); return; }
  const suggestion = view.nearest(suggestedPoints(), p);
  if (suggestion >= 0) {  // grabbing a suggestion accepts it; dragging moves it
    ensureLabel().points[state.doc.keypoints[suggestion]] = suggestedPoints()[suggestion][1];
    state.dragging = suggestion; state.keypoint = suggestion; render(); return;
  }
  const [x, y] = clampToImage(view.toImage(p));
  ensureLabel().points[state.doc.keypoints[state.keypoint]] = [round3(x), round3(y)];
  save();
  const label = currentLabel();
  const free = state.doc.keypoints.findIndex((name, k) => k > state.keypoint && !label.points[name]);
  if (free >= 0) state.keypoint = free; else nextKeypoint();
  render();
});

window.addEventListener("mousemove", (e) => {
  if (state.dragging < 0) return;
  const [x, y] = clampToImage(view.toImage(view.canvasPoint(e)));
  currentLabel().points[state.doc.keypoints[state.dragging]] = [round3(x), round3(y)];
  render();
});

window.addEventListener("mouseup", () => {
  if (state.dragging >= 0) { state.dragging = -1; save(); }
});

function stepToListed(direction) {
  const frames = new Set(state.proposals[state.video] || []);
  for (const l of state.labels.values()) if (l.video === state.video) frames.add(l.frame);
  const sorted = [...frames].sort((a, b) => a - b);
  const target = direction > 0 ? sorted.find((f) => f > state.frame) : sorted.reverse().find((f) => f < state.frame);
  if (target !== undefined) goto(target);
}

window.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "TEXTAREA" || e.target.tagName === "SELECT") return;
  if (!state.doc || !state.doc.keypoints.length) return;
  const step = e.shiftKey ? 10 : 1;
  if (e.key === "ArrowRight") goto(state.frame + step);
  else if (e.key === "ArrowLeft") goto(state.frame - step);
  else if (e.key === "]") stepToListed(1);
  else if (e.key === "[") stepToListed(-1);
  else if (e.key === "n" || (e.key === "Tab" && !e.shiftKey)) nextKeypoint(1);
  else if (e.key === "p" || (e.key === "Tab" && e.shiftKey)) nextKeypoint(-1);
  else if (e.key === "v") {
    ensureLabel().points[state.doc.keypoints[state.keypoint]] = null;
    save(); nextKeypoint(1);
  } else if (e.key === "a") { ensureLabel(); save(); render(); }
  else if (e.key === "s") acceptSuggestions();
  else if (e.key === "x") {
    if (currentLabel() && confirm(`Remove frame ${state.frame} from the labels?`)) {
      state.labels.delete(key(state.video, state.frame)); save(); render();
    }
  } else if (!view.zoomKey(e.key)) return;
  e.preventDefault();
});

$("slider").addEventListener("input", () => goto(Number($("slider").value)));
$("frame").addEventListener("change", () => goto(Number($("frame").value)));
$("prev").onclick = () => goto(state.frame - 1);
$("next").onclick = () => goto(state.frame + 1);
$("video").addEventListener("change", () => {
  state.video = Number($("video").value);
  view.image = null;
  goto(0);
  if (!state.proposals[state.video]) propose();
});

async function propose() {
  const video = state.video;
  showStatus("proposing frames (k-means)…");
  try {
    const r = await api(`/api/video/${video}/proposals?n=${Number($("n-proposals").value) || 20}`);
    state.proposals[video] = r.frames;
    showStatus(`${r.frames.length} frames proposed`);
    render();
  } catch (e) { showStatus(e.message, true); }
}
$("propose").onclick = propose;

async function suggest(frames) {
  const video = state.video;
  frames = frames.filter((f) => !state.labels.has(key(video, f))).slice(0, 50);
  if (!frames.length) { showStatus("no unlabelled frame to suggest keypoints for"); return; }
  showStatus(`suggesting keypoints on ${frames.length} frame(s)…`);
  try {
    const r = await api(`/api/video/${video}/suggest`, {method: "POST", body: {frames}});
    for (const [frame, points] of Object.entries(r.frames)) {
      const xy = {};
      for (const [name, p] of Object.entries(points)) xy[name] = [p.x, p.y];
      state.suggestions.set(key(video, Number(frame)), xy);
    }
    showStatus(`suggestions on ${Object.keys(r.frames).length} frame(s): drag to correct, s to accept`);
    render();
  } catch (e) {
    showStatus(e.message === "Not Found" ? "suggestions need a model: start ppmtrack label with --model" : e.message,
      true);
  }
}

function acceptSuggestions() {
  const suggested = suggestedPoints().filter(([, xy]) => xy);
  if (!suggested.length) return;
  const label = ensureLabel();
  for (const [k, xy] of suggested) label.points[state.doc.keypoints[k]] = xy;
  state.suggestions.delete(key(state.video, state.frame));
  save();
  render();
}
$("suggest-here").onclick = () => suggest([state.frame]);
$("suggest-proposed").onclick = () => suggest(state.proposals[state.video] || []);
$("accept").onclick = acceptSuggestions;

$("apply-names").onclick = () => {
  // "head = kp03" renames kp03 (its points kept); "head = kp03 + kp05" merges them (the mean where both are placed)
  const names = [], sources = {};
  for (const line of $("names").value.split("\n").map((s) => s.trim()).filter(Boolean)) {
    const [name, from] = line.split("=").map((s) => s.trim());
    if (!name || names.includes(name)) continue;
    names.push(name);
    sources[name] = from ? from.split("+").map((s) => s.trim()).filter(Boolean) : [name];
  }
  const used = new Set(Object.values(sources).flat());
  const skeleton = $("skeleton").value.split("\n").map((s) => s.split(",").map((n) => n.trim()))
    .filter((e) => e.length === 2 && e[0] && e[1]);
  const lost = [...state.labels.values()].some((l) => Object.entries(l.points)
    .some(([n, xy]) => xy && !used.has(n)));
  if (lost && !confirm("Keypoints that are no longer in the list lose their points. Go on?")) return;
  for (const l of state.labels.values()) {
    const points = {};
    for (const n of names) {
      const xs = sources[n].map((o) => l.points[o]).filter(Boolean);
      points[n] = xs.length ? [0, 1].map((d) => round3(xs.reduce((a, p) => a + p[d], 0) / xs.length)) : null;
    }
    l.points = points;
  }
  $("names").value = names.join("\n");
  state.doc.keypoints = names;
  state.doc.skeleton = skeleton;
  state.keypoint = 0;
  save();
  render();
};

$("export").onclick = async () => {
  try {
    await saving;
    const r = await api("/api/export-dlc", {method: "POST", body: {scorer: $("scorer").value}});
    $("exported").textContent = "wrote " + r.written.join(", ");
  } catch (e) { showStatus(e.message, true); }
};

async function start() {
  state.doc = await api("/api/state");
  for (const f of state.doc.frames) state.labels.set(key(f.video, f.frame), f);
  $("output").textContent = state.doc.output;
  $("names").value = state.doc.keypoints.join("\n");
  $("skeleton").value = state.doc.skeleton.map((e) => e.join(", ")).join("\n");
  if (!state.doc.keypoints.length) $("define").open = true;
  for (const v of state.doc.videos) $("video").add(new Option(v.name, v.id));
  const first = state.doc.frames.find((f) => f.video === 0);
  const fitCanvas = () => {
    const main = document.querySelector("main");
    $("view").width = Math.max(320, main.clientWidth - 16);
    $("view").height = Math.max(240, window.innerHeight - 70);
    view.fit();
  };
  fitCanvas();
  window.addEventListener("resize", fitCanvas);
  await goto(first ? first.frame : 0);
  showStatus(state.doc.frames.length ? `continuing ${state.doc.output}` : "ready");
  propose();
}

window.ppm = {state, view, goto, saved: () => saving};
start().catch((e) => showStatus(e.message, true));
