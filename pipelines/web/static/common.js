// Shared by label.js and review.js: JSON requests, the zoomable frame view and the keypoint colours.
"use strict";

const COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
  "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000",
  "#ffd8b1", "#000075", "#808080"];

function colour(k) { return COLOURS[k % COLOURS.length]; }

async function api(path, options = {}) {
  const init = Object.assign({}, options);
  if (init.body !== undefined && typeof init.body !== "string") {
    init.body = JSON.stringify(init.body);
    init.headers = {"Content-Type": "application/json"};
  }
  const response = await fetch(path, init);
  const doc = await response.json().catch(() => ({error: response.statusText}));
  if (!response.ok) {
    const error = new Error(doc.error || response.statusText);
    error.status = response.status;
    error.conflict = response.status === 409;
    throw error;
  }
  return doc;
}

function showStatus(text, isError = false) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

// A canvas showing one video frame, with zoom (wheel, + - 0) and pan (right or middle drag, or shift drag).
// Image pixel (x, y) has its centre at canvas point (offsetX + (x + 0.5) * scale, offsetY + (y + 0.5) * scale).
class FrameView {
  constructor(canvas, onDraw) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onDraw = onDraw;
    this.image = null;
    this.scale = 1; this.offsetX = 0; this.offsetY = 0;
    this.requested = null;
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const p = this.canvasPoint(e);
      this.zoomAt(p.x, p.y, e.deltaY < 0 ? 1.25 : 0.8);
    }, {passive: false});
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("mousedown", (e) => {
      if (e.button === 0 && !e.shiftKey) return;
      e.preventDefault();
      this.panning = {x: e.clientX, y: e.clientY, ox: this.offsetX, oy: this.offsetY};
    });
    window.addEventListener("mousemove", (e) => {
      if (!this.panning) return;
      this.offsetX = this.panning.ox + e.clientX - this.panning.x;
      this.offsetY = this.panning.oy + e.clientY - this.panning.y;
      this.draw();
    });
    window.addEventListener("mouseup", () => { this.panning = null; });
  }

  get isPanning() { return Boolean(this.panning); }

  canvasPoint(e) {
    const r = this.canvas.getBoundingClientRect();
    return {x: (e.clientX - r.left) * this.canvas.width / r.width, y: (e.clientY - r.top) * this.canvas.height / r.height};
  }

  toImage(p) { return {x: (p.x - this.offsetX) / this.scale - 0.5, y: (p.y - this.offsetY) / this.scale - 0.5}; }

  toCanvas(x, y) { return {x: this.offsetX + (x + 0.5) * this.scale, y: this.offsetY + (y + 0.5) * this.scale}; }

  fit() {
    if (!this.image) return;
    this.scale = Math.min(this.canvas.width / this.image.width, this.canvas.height / this.image.height);
    this.offsetX = (this.canvas.width - this.image.width * this.scale) / 2;
    this.offsetY = (this.canvas.height - this.image.height * this.scale) / 2;
    this.draw();
  }

  zoomAt(x, y, factor) {
    this.offsetX = x - (x - this.offsetX) * factor;
    this.offsetY = y - (y - this.offsetY) * factor;
    this.scale *= factor;
    this.draw();
  }

  zoomKey(key) {
    const c = {x: this.canvas.width / 2, y: this.canvas.height / 2};
    if (key === "+" || key === "=") this.zoomAt(c.x, c.y, 1.25);
    else if (key === "-") this.zoomAt(c.x, c.y, 0.8);
    else if (key === "0") this.fit();
    else return false;
    return true;
  }

  // Load a frame image; resolves once it is drawn. A newer request wins over an older one still loading.
  load(url) {
    this.requested = url;
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => {
        if (this.requested !== url) { resolve(false); return; }
        const first = !this.image;
        this.image = img;
        if (first) this.fit(); else this.draw();
        resolve(true);
      };
      img.onerror = () => reject(new Error("cannot load " + url));
      img.src = url;
    });
  }

  draw() {
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#222";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.image) return;
    ctx.imageSmoothingEnabled = this.scale < 2;
    ctx.drawImage(this.image, this.offsetX, this.offsetY, this.image.width * this.scale,
      this.image.height * this.scale);
    if (this.onDraw) this.onDraw(ctx);
  }

  dot(x, y, fill, radius = 5, hollow = false) {
    const p = this.toCanvas(x, y);
    const ctx = this.ctx;
    ctx.beginPath();
    ctx.arc(p.x, p.y, radius, 0, 2 * Math.PI);
    ctx.lineWidth = 2;
    if (hollow) { ctx.strokeStyle = fill; ctx.stroke(); return; }
    ctx.fillStyle = fill;
    ctx.fill();
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.arc(p.x, p.y, radius + 0.5, 0, 2 * Math.PI);
    ctx.stroke();
  }

  line(a, b, stroke, width = 2) {
    const p = this.toCanvas(a[0], a[1]), q = this.toCanvas(b[0], b[1]);
    this.ctx.beginPath();
    this.ctx.moveTo(p.x, p.y);
    this.ctx.lineTo(q.x, q.y);
    this.ctx.strokeStyle = stroke;
    this.ctx.lineWidth = width;
    this.ctx.stroke();
  }

  // The index of the point (among {k: [x, y]}) within `radius` canvas pixels of canvas point p, or -1.
  nearest(points, p, radius = 9) {
    let best = -1, bestD = radius;
    for (const [k, xy] of points) {
      if (!xy) continue;
      const q = this.toCanvas(xy[0], xy[1]);
      const d = Math.hypot(q.x - p.x, q.y - p.y);
      if (d <= bestD) { best = k; bestD = d; }
    }
    return best;
  }
}
