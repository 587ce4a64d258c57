// The stvh search page: plain JS against the JSON API (no framework, no network beyond this server).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 48;
const state = { info: null, offset: 0, total: 0, query: null, queryLabels: null, seq: 0, timer: null };

// clip ids are VIDEO/CLIP: encode each part, keep the slash as the path separator
const clipPath = (id) => id.split("/").map(encodeURIComponent).join("/");
const thumbUrl = (id, width) => `/api/clips/${clipPath(id)}/keyframe.jpg?width=${width}`;

async function api(path, options = {}) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({ detail: res.statusText }));
  if (!res.ok) throw new Error(`${res.status}: ${body.detail || res.statusText}`);
  return body;
}

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function activityText(row) {
  return row.activity_name || (row.activity >= 0 ? `activity ${row.activity}` : "unlabeled");
}

// ---------------------------------------------------------------- index and clip picker
async function loadIndex() {
  const info = await api("/api/index");
  const first = state.info === null;
  state.info = info;
  $("index-summary").textContent = `${info.clips} clips · ${info.bits}-bit codes · ${info.depth} depths · ` +
    `${info.mode} mode · ${info.engine || info.backend}${info.allow_writes ? " · writes on" : ""}`;
  const focus = $("focus");
  focus.max = String(info.depth);
  if (first) focus.value = "1";
  focus.disabled = info.depth < 2;
  fill($("f-split"), info.splits);
  fill($("f-activity"), info.activities);
  fill($("f-group"), info.groups.slice(0, 500));
  for (const node of document.querySelectorAll(".writes")) node.hidden = !info.allow_writes;
  showFocus();
}

function fill(select, values) {  // keeps the first option ("all") and the current choice
  const chosen = select.value;
  select.replaceChildren(select.options[0], ...values.map((v) => el("option", { value: v, text: v || "(none)" })));
  select.value = values.includes(chosen) ? chosen : "";
}

async function loadClips() {
  const params = new URLSearchParams({ offset: state.offset, limit: PAGE });
  for (const [key, id] of [["split", "f-split"], ["activity", "f-activity"], ["group", "f-group"]]) {
    if ($(id).value) params.set(key, $(id).value);
  }
  const page = await api(`/api/clips?${params}`);
  state.total = page.total;
  const grid = $("clip-grid");
  grid.replaceChildren(...page.clips.map((c) => {
    const card = el("div", { className: "card clip", "data-clip": c.id, title: `${c.id} · group ${c.group}` }, [
      el("img", { src: thumbUrl(c.id, 160), alt: c.id, loading: "lazy" }),
      el("div", { className: "meta" }, [el("div", { className: "act", text: activityText(c) }),
                                         el("div", { className: "id", text: c.id })]),
    ]);
    card.addEventListener("click", () => pickClip(c));
    if (state.query && state.query.clip === c.id) card.classList.add("selected");
    return card;
  }));
  const last = Math.min(state.offset + PAGE, page.total);
  $("page-info").textContent = page.total ? `${state.offset + 1}–${last} of ${page.total}` : "no clips";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= page.total;
}

// ---------------------------------------------------------------- the query
function pickClip(row) {
  state.query = { clip: row.id };
  state.queryLabels = row;
  for (const c of document.querySelectorAll("#clip-grid .card")) {
    c.classList.toggle("selected", c.dataset.clip === row.id);
  }
  showQuery(thumbUrl(row.id, 320), `clip ${row.id}`, row, false);
  search();
}

function showQuery(src, title, labels, predicted) {
  $("query-card").classList.remove("empty");
  const img = $("query-img");
  img.src = src;
  img.hidden = false;
  const act = activityText(labels) + (predicted ? " (predicted)" : "");
  $("query-text").replaceChildren(el("strong", { text: title }), el("br"),
    document.createTextNode(`${act} · group ${labels.group || "–"}`));
  $("show-attention").disabled = false;
  $("attention").hidden = true;
}

function showAttention() {
  if (!state.query) return;
  const url = state.query.clip ? `/api/clips/${clipPath(state.query.clip)}/attention.png`
                               : `/api/queries/${state.query.query}/attention.png`;
  const img = $("attention-img");
  status("drawing the attention maps…");
  img.onload = () => { $("attention").hidden = false; status(""); };
  img.onerror = () => status("the attention maps could not be drawn", true);
  img.src = url;
}

// ---------------------------------------------------------------- focus and search
function showFocus() {
  const f = Number($("focus").value);
  const depth = state.info ? state.info.depth : 1;
  const name = state.info ? state.info.focus_names[f - 1] : "";
  $("focus-label").textContent = `focus ${f} of ${depth} (${name})`;
}

async function search() {
  if (!state.query) return;
  const seq = ++state.seq;
  const body = { ...state.query, k: Number($("k").value), focus: Number($("focus").value) };
  status("searching…");
  try {
    const res = await api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify(body) });
    if (seq === state.seq) showResults(res);  // a slower, older answer never overwrites a newer one
  } catch (err) {
    if (seq === state.seq) status(err.message, true);
  }
}

function showResults(res) {
  const q = state.queryLabels || {};
  const grid = $("results");
  grid.dataset.focus = String(res.focus);
  grid.replaceChildren(...res.results.map((r) => {
    const knownGroup = q.group !== undefined && q.group !== null;  // an upload has no group of its own
    const knownAct = q.activity !== undefined && q.activity >= 0;
    const sameGroup = knownGroup && r.group === q.group;
    const sameAct = knownAct && r.activity === q.activity;
    const mark = (known, same) => `badge${known ? (same ? " yes" : " no") : ""}`;
    const card = el("div", { className: `card hit${sameGroup ? " same-group" : ""}`, "data-clip": r.id,
                             "data-distance": String(r.distance), title: `${r.id} · split ${r.split || "–"}` }, [
      el("img", { src: thumbUrl(r.id, 320), alt: r.id, loading: "lazy" }),
      el("div", { className: "meta" }, [
        el("div", { className: "top" }, [el("span", { text: `#${r.rank}` }),
                                         el("span", { className: "dist", text: `d = ${r.distance}` })]),
        el("div", { className: "act" }, [el("span", { className: mark(knownAct, sameAct),
                                                      text: activityText(r) })]),
        el("div", {}, [el("span", { className: mark(knownGroup, sameGroup), text: `group ${r.group}` })]),
        el("div", { className: "id", text: r.id }),
      ]),
    ]);
    card.addEventListener("click", () => pickClip(r));
    return card;
  }));
  status(`top ${res.results.length} at focus ${res.focus} (${res.focus_name}) · search ${res.search_ms.toFixed(2)} ms` +
         " · green: same group / same activity as the query");
}

function onFocus() {
  showFocus();
  clearTimeout(state.timer);
  state.timer = setTimeout(search, 40);  // re-run as the slider moves, at most every 40 ms
}

// ---------------------------------------------------------------- uploads
function uploadForm() {
  const media = $("u-media").files[0];
  const tracks = $("u-tracks").files[0];
  if (!media || !tracks) throw new Error("choose a video (or a zip of frames) and a tracks file");
  const form = new FormData();
  form.append(media.name.toLowerCase().endsWith(".zip") ? "frames" : "video", media);
  form.append("tracks", tracks);
  return form;
}

async function searchUpload(event) {
  event.preventDefault();
  try {
    const form = uploadForm();
    form.append("k", $("k").value);
    form.append("focus", $("focus").value);
    status("encoding the uploaded clip…");
    const seq = ++state.seq;
    const res = await api("/api/search", { method: "POST", body: form });
    state.query = { query: res.query.token };
    state.queryLabels = res.query;
    for (const c of document.querySelectorAll("#clip-grid .card")) c.classList.remove("selected");
    showQuery(`/api/queries/${res.query.token}/keyframe.jpg?width=320`,
              `uploaded clip (${res.query.persons} persons, ${res.query.frames} frames)`, res.query, true);
    if (seq === state.seq) showResults(res);
  } catch (err) {
    status(err.message, true);
  }
}

async function addUpload() {
  try {
    const form = uploadForm();
    if ($("u-name").value) form.append("name", $("u-name").value);
    if ($("u-group").value) form.append("group", $("u-group").value);
    status("encoding and adding the clip…");
    const res = await api("/api/clips", { method: "POST", body: form });
    status(`added ${res.id} (${activityText(res)}, predicted) to the index`);
    await loadIndex();
    await loadClips();
  } catch (err) {
    status(err.message, true);
  }
}

// ---------------------------------------------------------------- wiring
function wire() {
  $("focus").addEventListener("input", onFocus);
  $("k").addEventListener("change", search);
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadClips(); });
  $("next").addEventListener("click", () => { state.offset += PAGE; loadClips(); });
  for (const id of ["f-split", "f-activity", "f-group"]) {
    $(id).addEventListener("change", () => { state.offset = 0; loadClips(); });
  }
  $("upload-form").addEventListener("submit", searchUpload);
  $("u-add").addEventListener("click", addUpload);
  $("show-attention").addEventListener("click", showAttention);
}

wire();
loadIndex().then(loadClips).catch((err) => status(err.message, true));
