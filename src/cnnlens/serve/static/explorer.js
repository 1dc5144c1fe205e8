// cnnlens explorer: plain JavaScript over the app's JSON routes (GET /api lists them).
"use strict";

const state = {
  model: null,
  layers: [],
  image: null,        // image info of the current image
  generation: 0,      // bumps on every change; answers to older requests are dropped
  jobs: new Map(),    // panel key -> running job id
  channel: null,      // {layer, channel}
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function showError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  const a = Math.abs(value);
  if (a !== 0 && (a < 0.01 || a >= 1000)) return value.toExponential(2);
  return value.toFixed(a < 1 ? 3 : 2);
}

function scaleBar(container, scale) {
  container.replaceChildren(
    el("img", { src: scale.png, alt: `colour scale ${scale.cmap}` }),
    el("div", { class: "ends" }, el("span", { text: fmt(scale.min) }),
      el("span", { text: scale.cmap }), el("span", { text: fmt(scale.max) })),
  );
}

// ------------------------------------------------------------------ image

// Bumps on every image request: an answer that arrives after a newer choice is dropped
// (the preselected sample may still be computing when the user picks another).
let imageTicket = 0;

async function chooseSample(name) {
  if (!name) return;
  showError("upload-error", "");
  const ticket = ++imageTicket;
  try {
    const info = await api(`/api/samples/${encodeURIComponent(name)}`, { method: "POST" });
    if (ticket === imageTicket) setImage(info);
  } catch (err) {
    if (ticket !== imageTicket) return;
    showError("upload-error", err.message);
  }
}

async function upload(file) {
  showError("upload-error", "");
  const ticket = ++imageTicket;
  try {
    const info = await api("/api/images", {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": encodeURIComponent(file.name).slice(0, 80) },
      body: file,
    });
    if (ticket !== imageTicket) return;
    $("sample").value = "";
    setImage(info);
  } catch (err) {
    if (ticket !== imageTicket) return;
    showError("upload-error", `${file.name}: ${err.message}`);
  }
}

function setImage(info) {
  state.image = info;
  const picture = $("picture");
  picture.src = info.picture;
  picture.hidden = false;
  $("picture-name").textContent = `${info.name} · ${info.size[1]}×${info.size[0]} crop the model saw`;
  const body = $("top").querySelector("tbody");
  body.replaceChildren(...info.top.map((row, i) => {
    const tr = el("tr", { "data-label": row.label, onclick: () => { $("target").value = row.label; markTarget(); refreshExplain(); } },
      el("td", { text: String(i + 1) }), el("td", { text: `${row.label} (${row.index})` }),
      el("td", { text: row.probability.toFixed(3) }));
    return tr;
  }));
  markTarget();
  $("channel-base").src = info.picture;
  refreshExplain();
  refreshInside();
  if (state.model.index) $("neighbors-section").hidden = false;
  for (const id of ["neighbors-feature", "neighbors-pixel"]) $(id).replaceChildren();
  $("neighbors-job").textContent = "";
}

function markTarget() {
  const wanted = $("target").value.trim().toLowerCase();
  for (const tr of $("top").querySelectorAll("tbody tr")) {
    tr.classList.toggle("chosen", tr.dataset.label.toLowerCase() === wanted);
  }
}

// ------------------------------------------------------------------ explain

function chosenMethods() {
  return [...$("methods").querySelectorAll("input:checked")].map((box) => box.value);
}

function methodInfo(name) {
  return state.model.methods.find((m) => m.name === name);
}

function explainQuery(method) {
  const info = methodInfo(method);
  const params = new URLSearchParams({ method, display: $("display").value });
  const target = $("target").value.trim();
  if (target) params.set("target", target);
  if (info.uses_layer && $("layer").value) params.set("layer", $("layer").value);
  for (const input of document.querySelectorAll(`#options [data-method="${method}"] [data-option]`)) {
    params.set(`opt.${input.dataset.option}`, input.value);
  }
  if (!info.signed && params.get("display") === "signed") params.set("display", "heatmap");
  return params;
}

function panelFor(method) {
  let panel = document.querySelector(`.panel[data-method="${method}"]`);
  if (!panel) {
    const opacity = Number($("opacity").value) / 100;
    const map = el("img", { class: "overlay map", alt: `${method} map`, width: "224", height: "224" });
    map.style.opacity = String(opacity);
    map.hidden = true;  // until its first map arrives
    panel = el("figure", { class: "panel", "data-method": method },
      el("h3", { text: method }),
      el("div", { class: "stack" }, el("img", { class: "base", alt: "image", width: "224", height: "224" }), map),
      el("div", { class: "scale" }),
      el("div", { class: "job" }),
      el("figcaption", { class: "caption" }),
      el("div", { class: "curves" }));
    $("panels").append(panel);
  }
  return panel;
}

function refreshExplain() {
  if (!state.image) return;
  state.generation += 1;
  const generation = state.generation;
  const methods = chosenMethods();
  for (const panel of document.querySelectorAll(".panel")) {
    if (!methods.includes(panel.dataset.method)) panel.remove();
  }
  showError("explain-error", "");
  for (const method of methods) runPanel(method, generation);
}

async function runPanel(method, generation) {
  const panel = panelFor(method);
  panel.querySelector("img.base").src = state.image.picture;
  const caption = panel.querySelector(".caption");
  const jobBox = panel.querySelector(".job");
  panel.classList.add("busy");
  caption.textContent = "computing…";
  panel.querySelector(".curves").replaceChildren();
  const params = explainQuery(method);
  const previous = state.jobs.get(method);
  if (previous) { cancelJob(previous); state.jobs.delete(method); }
  try {
    let result;
    if (methodInfo(method).long) {
      params.set("kind", "explain");
      params.set("image", state.image.id);
      const job = await api(`/api/jobs?${params}`, { method: "POST" });
      state.jobs.set(method, job.id);
      result = await followJob(job, jobBox, () => generation !== state.generation);
      state.jobs.delete(method);
      if (!result) return;
    } else {
      result = await api(`/api/images/${state.image.id}/explain?${params}`);
    }
    if (generation !== state.generation) return;
    showMap(panel, result);
    const curves = await api(`/api/images/${state.image.id}/curves?${params}`);
    if (generation !== state.generation) return;
    drawCurves(panel.querySelector(".curves"), curves);
  } catch (err) {
    if (generation !== state.generation) return;
    caption.textContent = "";
    jobBox.textContent = "";
    const box = $("explain-error");
    box.textContent = `${method}: ${err.message}`;
    box.hidden = false;
  } finally {
    panel.classList.remove("busy");
  }
}

function showMap(panel, result) {
  const map = panel.querySelector("img.map");
  map.src = result.map;
  map.hidden = false;
  map.dataset.target = String(result.target);
  map.dataset.layer = result.layer || "";
  scaleBar(panel.querySelector(".scale"), result.scale);
  const options = Object.entries(result.options).map(([k, v]) => `${k}=${v}`).join(", ");
  panel.querySelector(".caption").textContent =
    `${result.label} (${result.target})` + (result.layer ? ` · layer ${result.layer}` : "") +
    (options ? ` · ${options}` : "") + ` · ${result.display} · ${result.cached ? "cached" : result.seconds.toFixed(2) + " s"}`;
}

function drawCurves(container, curves) {
  const width = 224, height = 84, pad = 4;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const top = Math.max(1e-6, ...curves.deletion, ...curves.insertion);
  const line = (values, color) => {
    const path = document.createElementNS(ns, "polyline");
    const points = values.map((v, i) => {
      const x = pad + (i / (values.length - 1)) * (width - 2 * pad);
      const y = height - pad - (v / top) * (height - 2 * pad);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    path.setAttribute("points", points.join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", color);
    path.setAttribute("stroke-width", "2");
    svg.append(path);
  };
  line(curves.deletion, "#c0392b");
  line(curves.insertion, "#1f77b4");
  container.replaceChildren(svg,
    el("div", { class: "metric", text: `x: fraction of pixels (${curves.steps} steps), ${curves.ranking} ranking; y: p(class) 0–${fmt(top)}` }),
    el("div", { class: "metric",
      text: `deletion AUC ${curves.deletion_auc.toFixed(3)} ↓ (red) · insertion AUC ${curves.insertion_auc.toFixed(3)} ↑ (blue)` }));
}

// ------------------------------------------------------------------ jobs

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function cancelJob(id) {
  fetch(`/api/jobs/${id}`, { method: "DELETE" }).catch(() => {});
}

// Poll a job until it ends; show its progress and a cancel button in `box`.
async function followJob(job, box, stale) {
  const bar = el("progress", { max: "1" });
  const text = el("span");
  const cancel = el("button", { type: "button", text: "Cancel", onclick: () => cancelJob(job.id) });
  box.replaceChildren(bar, " ", text, " ", cancel);
  let delay = 150;
  for (;;) {
    if (job.progress !== null) bar.value = job.progress; else bar.removeAttribute("value");
    text.textContent = `${job.kind} ${job.state}` + (job.total ? ` ${job.done}/${job.total}` : "") + (job.stage ? ` · ${job.stage}` : "");
    if (job.state === "done") { box.replaceChildren(); return job.result; }
    if (job.state === "failed") { box.replaceChildren(); throw new Error(job.error); }
    if (job.state === "cancelled") { box.replaceChildren(el("span", { text: "cancelled" })); return null; }
    if (stale()) { cancelJob(job.id); box.replaceChildren(); return null; }
    await sleep(delay);
    delay = Math.min(1000, delay * 1.5);
    job = await api(`/api/jobs/${job.id}`);
  }
}

// ------------------------------------------------------------------ look inside

async function refreshInside() {
  const layer = $("inside-layer").value;
  if (!state.image || !layer) return;
  showError("inside-error", "");
  const info = state.layers.find((l) => l.name === layer);
  $("inside-info").textContent = layerLabel(info);
  try {
    const grid = await api(`/api/images/${state.image.id}/activations?layer=${encodeURIComponent(layer)}&top=64`);
    if (grid.layer !== $("inside-layer").value || grid.image !== state.image.id) return;
    $("grid").replaceChildren(...grid.tiles.map((tile) => el("figure", {
      "data-channel": String(tile.channel),
      title: `channel ${tile.channel}: mean ${fmt(tile.mean)}, max ${fmt(tile.max)}`,
      onclick: () => chooseChannel(layer, tile.channel),
    }, el("img", { src: tile.png, alt: `channel ${tile.channel}` }), el("span", { text: String(tile.channel) }))));
    scaleBar($("grid-scale"), grid.scale);
    // Opens on the shown channel whose map varies most (the most active one can be constant).
    const keep = state.channel && state.channel.layer === layer ? state.channel.channel : grid.default_channel;
    chooseChannel(layer, keep);
  } catch (err) {
    showError("inside-error", err.message);
  }
}

async function chooseChannel(layer, channel) {
  state.channel = { layer, channel };
  for (const fig of $("grid").querySelectorAll("figure")) {
    fig.classList.toggle("chosen", Number(fig.dataset.channel) === channel);
  }
  $("channel").hidden = false;
  $("channel-title").textContent = `${layer} · channel ${channel}`;
  $("visual").hidden = true;
  $("visual-job").textContent = "";
  $("visual-caption").textContent = "Gradient ascent on the input for this channel (background job, cached).";
  $("patches").replaceChildren();
  $("patches-job").textContent = "";
  $("dataset").hidden = !state.model.index;
  const query = `layer=${encodeURIComponent(layer)}&channel=${channel}`;
  try {
    const [detail, weights] = await Promise.all([
      api(`/api/images/${state.image.id}/channel?${query}`),
      api(`/api/weights?${query}`),
    ]);
    if (!state.channel || state.channel.channel !== channel || state.channel.layer !== layer) return;
    $("channel-map").src = detail.map;
    $("channel-map").style.opacity = String(Number($("opacity").value) / 100);
    scaleBar($("channel-scale"), detail.scale);
    const box = $("channel-box");
    if (detail.peak_box) {
      const [top, left, bottom, right] = detail.peak_box;
      const sy = 224 / state.image.size[0], sx = 224 / state.image.size[1];
      box.style.top = `${top * sy}px`; box.style.left = `${left * sx}px`;
      box.style.height = `${(bottom - top) * sy}px`; box.style.width = `${(right - left) * sx}px`;
      box.hidden = false;
    } else {
      box.hidden = true;
    }
    $("channel-caption").textContent = detail.peak
      ? `mean ${fmt(detail.mean)}, max ${fmt(detail.max)} at (${detail.peak.join(", ")}); the box is the input region the peak position sees (receptive field).`
      : `constant map: no peak (every position is ${fmt(detail.max)}).`;
    const img = $("weights");
    if (weights.picture) { img.src = weights.picture; img.hidden = false; } else { img.hidden = true; }
    $("weights-caption").textContent = `Weights: ${weights.note}`;
    const known = await api(`/api/visualization?${query}`);  // computed before: show it
    if (known.job && known.job.state !== "failed" && known.job.state !== "cancelled") startVisual();
  } catch (err) {
    showError("inside-error", err.message);
  }
}

async function startVisual() {
  if (!state.channel) return;
  const { layer, channel } = state.channel;
  try {
    const job = await api(`/api/jobs?kind=visualize&layer=${encodeURIComponent(layer)}&channel=${channel}`, { method: "POST" });
    const stale = () => !state.channel || state.channel.layer !== layer || state.channel.channel !== channel;
    const result = await followJob(job, $("visual-job"), stale);
    if (!result || stale()) return;
    $("visual").src = result.picture;
    $("visual").hidden = false;
    $("visual-caption").textContent = `Feature visualization of ${layer}:${channel}, ${result.steps} steps at ${result.size} px (cached on the server).`;
  } catch (err) {
    showError("inside-error", err.message);
  }
}

function thumb(item, caption) {
  return el("figure", {}, el("img", { src: item.picture, alt: `item ${item.row}` }), el("figcaption", { text: caption }));
}

async function startPatches() {
  if (!state.channel) return;
  const { layer, channel } = state.channel;
  try {
    const job = await api(`/api/jobs?kind=patches&layer=${encodeURIComponent(layer)}&channel=${channel}&k=9`, { method: "POST" });
    const result = await followJob(job, $("patches-job"), () => !state.channel || state.channel.channel !== channel);
    if (!result) return;
    $("patches").replaceChildren(...result.patches.map((p) => thumb(p, `#${p.row} ${p.label || ""} ${fmt(p.activation)}`)));
  } catch (err) {
    showError("inside-error", err.message);
  }
}

async function startNeighbors() {
  if (!state.image) return;
  const image = state.image.id;
  try {
    const job = await api(`/api/jobs?kind=neighbors&image=${image}&k=8`, { method: "POST" });
    const result = await followJob(job, $("neighbors-job"), () => state.image.id !== image);
    if (!result) return;
    $("neighbors-feature").replaceChildren(...result.feature_space.map((n) => thumb(n, `#${n.row} ${n.label || ""} d=${fmt(n.distance)}`)));
    $("neighbors-pixel").replaceChildren(...result.pixel_space.map((n) => thumb(n, `#${n.row} ${n.label || ""} d=${fmt(n.distance)}`)));
  } catch (err) {
    showError("inside-error", err.message);
  }
}

// ------------------------------------------------------------------ setup

function layerLabel(info) {
  if (!info) return "";
  const rf = info.receptive_field ? ` · RF ${info.receptive_field.size.join("×")} px` : "";
  return `${info.name} · ${info.type} · ${info.shape.join("×")}${rf}`;
}

function buildOptions() {
  const box = $("options");
  box.replaceChildren();
  for (const method of chosenMethods()) {
    const info = methodInfo(method);
    if (!info.options.length) continue;
    const group = el("div", { class: "method-options", "data-method": method }, el("b", { text: method }));
    for (const option of info.options) {
      let input;
      if (option.type === "choice") {
        input = el("select", { "data-option": option.name }, ...option.choices.map((c) => el("option", { value: c, text: c })));
        input.value = option.default;
      } else {
        input = el("input", { type: "number", "data-option": option.name, value: String(option.default),
          step: option.type === "int" ? "1" : "any" });
        if (option.min !== undefined) input.min = String(option.min);
        if (option.max !== undefined) input.max = String(option.max);
      }
      input.addEventListener("change", refreshExplain);
      group.append(el("label", { title: option.help || "" }, option.name, input));
    }
    box.append(group);
  }
}

let completion = 0;
async function complete() {
  const query = $("target").value;
  const ticket = ++completion;
  try {
    const found = await api(`/api/classes?q=${encodeURIComponent(query)}&limit=20`);
    if (ticket !== completion) return;
    $("class-list").replaceChildren(...found.classes.map((c) => el("option", { value: c.label })));
  } catch (_) { /* completion is a convenience */ }
}

async function init() {
  state.model = await api("/api/model");
  const layerList = await api("/api/layers");
  state.layers = layerList.layers;
  for (const sample of state.model.samples) {
    $("sample").append(el("option", { value: sample.name, text: `${sample.name} — ${sample.description}` }));
  }
  const defaults = ["gradcam", "saliency"];
  for (const method of state.model.methods) {
    const box = el("input", { type: "checkbox", value: method.name });
    box.checked = defaults.includes(method.name);
    box.addEventListener("change", () => { buildOptions(); refreshExplain(); });
    $("methods").append(el("label", { title: method.summary }, box, method.name + (method.long ? " (job)" : "")));
  }
  $("layer").append(el("option", { value: "", text: "default: last feature map" }));
  for (const info of state.layers) {
    $("layer").append(el("option", { value: info.name, text: layerLabel(info) }));
    $("inside-layer").append(el("option", { value: info.name, text: layerLabel(info) }));
  }
  // The report's and `cnnlens activations`' default layer, computed by the server.
  if (layerList.default) $("inside-layer").value = layerList.default;
  buildOptions();

  $("sample").addEventListener("change", (e) => chooseSample(e.target.value));
  $("file").addEventListener("change", (e) => { if (e.target.files.length) upload(e.target.files[0]); e.target.value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $("target").addEventListener("input", complete);
  $("target").addEventListener("change", () => { markTarget(); refreshExplain(); });
  $("layer").addEventListener("change", refreshExplain);
  $("display").addEventListener("change", refreshExplain);
  $("opacity").addEventListener("input", () => {
    const value = String(Number($("opacity").value) / 100);
    for (const img of document.querySelectorAll("img.overlay")) img.style.opacity = value;
  });
  $("inside-layer").addEventListener("change", () => { state.channel = null; refreshInside(); });
  $("visual-start").addEventListener("click", startVisual);
  $("patches-start").addEventListener("click", startPatches);
  $("neighbors-start").addEventListener("click", startNeighbors);
  // Open on the first sample so the page shows a whole explanation at once, not empty boxes.
  if (state.model.samples.length) {
    const first = state.model.samples[0].name;
    $("sample").value = first;
    chooseSample(first);
  }
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", () => {
  init().catch((err) => showError("upload-error", `could not start: ${err.message}`));
});
