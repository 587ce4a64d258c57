// The stvh search page: plain JS against the JSON API (no framework, no network beyond this server).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 48;
const state = { info: null, offset: 0, total: 0, query: null, queryLabels: null, seq: 0, timer: null };
const HOVERLESS = window.matchMedia("(hover: none)").matches;  // a phone: nothing to hover, so previews play
const NARROW = window.matchMedia("(max-width: 760px)");  // one column: the results are below the picker

// clip ids are VIDEO/CLIP: encode each part, keep the slash as the path separator
const clipPath = (id) => id.split("/").map(encodeURIComponent).join("/");
const thumbUrl = (id, width) => `/api/clips/${clipPath(id)}/keyframe.jpg?width=${width}`;
const previewUrl = (id, width) => `/api/clips/${clipPath(id)}/preview.webp?width=${width}`;

async function api(path, options = {}) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({ detail: res.statusText }));
  if (!res.ok) throw new Error(`${res.status}: ${body.detail || res.statusText}`);
  return body;
}

function status(text, isError = false) {
  const node = $("status");
  node.textContent = text;
  node.classList.toggle("error", isError);
}

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function activityText(row) {
  return row.activity_name || (row.activity >= 0 ? `activity ${row.activity}` : "unlabeled");
}

// ---------------------------------------------------------------- cards
// A card is a <div> holding a native <button> (focusable; Enter and Space pick it) and, for a clip added
// through the page, a Delete button beside it. Hovering or focusing a card plays its preview: the clip's
// frames with their boxes (an animated WebP), instead of the key frame.
function card({ row, kind, width, label, meta, onPick, onDelete }) {
  const img = el("img", { src: thumbUrl(row.id, width), alt: "", loading: "lazy" });
  img.dataset.still = img.src;
  img.dataset.moving = previewUrl(row.id, width);
  const thumb = el("span", { className: "thumb" }, [img]);
  const pick = el("button", { type: "button", className: "pick", "aria-label": label }, [thumb, meta]);
  pick.addEventListener("click", onPick);
  const node = el("div", { className: `card ${kind}`, "data-clip": row.id }, [pick]);
  if (onDelete) {
    const del = el("button", { type: "button", className: "delete", text: "Delete",
                               "aria-label": `delete clip ${row.id} from the index` });
    del.addEventListener("click", onDelete);
    node.append(del);
  }
  for (const [on, play] of [["pointerenter", true], ["focusin", true], ["pointerleave", false], ["focusout", false]]) {
    node.addEventListener(on, () => playPreview(node, play));
  }
  return node;
}

function playPreview(node, play) {
  const img = node.querySelector(".thumb img");
  const on = play || ($("play-all").checked && node.matches("#results .card"));
  img.src = on ? img.dataset.moving : img.dataset.still;
  node.classList.toggle("playing", on);
}

function playAll() {
  for (const node of document.querySelectorAll("#results .card")) playPreview(node, false);
}

// arrow keys move between the cards of a grid (Tab still walks them in order); Enter / Space pick
function gridKeys(event) {
  const grid = event.currentTarget;
  const picks = [...grid.querySelectorAll(".pick")];
  const at = picks.indexOf(document.activeElement);
  if (at < 0) return;
  const top = (p) => Math.round(p.getBoundingClientRect().top);
  const columns = Math.max(1, picks.filter((p) => top(p) === top(picks[0])).length);  // cards in the first row
  const to = { ArrowLeft: at - 1, ArrowRight: at + 1, ArrowUp: at - columns, ArrowDown: at + columns,
               Home: 0, End: picks.length - 1 }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  picks[Math.min(picks.length - 1, Math.max(0, to))].focus();
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
  $("f-new-wrap").hidden = !info.watch;
  $("watch").hidden = !info.watch;
  if (info.watch && first) watchLoop();
  $("focus-ticks").replaceChildren(...info.focus_names.map((_, i) => el("span", { text: String(i + 1) })));
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
  if ($("f-new").checked) params.set("new", "true");
  const page = await api(`/api/clips?${params}`);
  if (page.clips.length === 0 && state.offset > 0) {  // the last clip of the last page was deleted
    state.offset = Math.max(0, state.offset - PAGE);
    return loadClips();
  }
  state.total = page.total;
  const writes = state.info && state.info.allow_writes;
  $("clip-grid").replaceChildren(...page.clips.map((c) => {
    const node = card({
      row: c, kind: "clip", width: 160,
      label: `${c.id}: ${activityText(c)}, group ${c.group}${c.split ? `, ${c.split}` : ""}; search with it`,
      meta: el("span", { className: "meta" }, [el("span", { className: "act", text: activityText(c) }),
                                               el("span", { className: "id", text: c.id })]),
      onPick: () => pickClip(c),
      onDelete: writes && c.split === "upload" ? () => deleteClip(c.id) : null,
    });
    markSelected(node);
    return node;
  }));
  const last = Math.min(state.offset + PAGE, page.total);
  $("page-info").textContent = page.total ? `${state.offset + 1}–${last} of ${page.total}` : "no clips";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= page.total;
}

function markSelected(node) {
  const on = Boolean(state.query && state.query.clip === node.dataset.clip);
  node.classList.toggle("selected", on);
  node.querySelector(".pick").setAttribute("aria-pressed", String(on));
}

// ---------------------------------------------------------------- --watch DIR
async function watchLoop() {  // every 3 s: new footage shows up in the list and the counts, skipped files listed
  try {
    const w = await api("/api/watch");
    $("watch-summary").textContent = `watched folder ${w.folder}: ${w.new_clips} new clips since start, ` +
      `${w.queued.length} queued, ${w.skipped.length} skipped`;
    $("watch-waiting").textContent = w.waiting.length ? `waiting: ${w.waiting.map((x) => x.reason).join("; ")}` : "";
    $("watch-skipped").replaceChildren(...w.skipped.map((x) => el("li", { text: `${x.file}: ${x.reason}` })));
    if (w.new_clips !== state.newClips) {
      const changed = state.newClips !== undefined;
      state.newClips = w.new_clips;
      if (changed) { await loadIndex(); await loadClips(); }
    }
  } catch (err) {
    status(err.message, true);
  }
  setTimeout(watchLoop, 3000);
}

// ---------------------------------------------------------------- the query
function pickClip(row) {
  state.query = { clip: row.id };
  state.queryLabels = row;
  document.querySelectorAll("#clip-grid .card").forEach(markSelected);
  showQuery(previewUrl(row.id, 320), `clip ${row.id}`, row, false);
  search();
  if (NARROW.matches) $("query-card").scrollIntoView({ block: "start" });  // else the pick shows nothing
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

function clearQuery() {
  state.query = null;
  state.queryLabels = null;
  $("query-card").classList.add("empty");
  $("query-img").hidden = true;
  $("query-img").removeAttribute("src");
  $("query-text").textContent = "Pick a clip, or upload one.";
  $("show-attention").disabled = true;
  $("attention").hidden = true;
  document.querySelectorAll("#clip-grid .card").forEach(markSelected);
}

function clearResults() {
  $("results").replaceChildren();
  delete $("results").dataset.focus;
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
// What each depth keeps: the shallowest code is built from the players' appearance (the same match looks
// alike: court, uniforms, light); each deeper code mixes in more of their positions and movement, until the
// deepest one matches the group activity in any match.
function focusHelp(f, depth) {
  if (depth < 2) return "This index has one code per clip: a single focus, the group activity.";
  if (f === 1) {
    return `Visual focus (depth 1 of ${depth}): clips that look like the query — the same match: court, ` +
      "uniforms, light — whatever the play. Built from the players' appearance alone.";
  }
  if (f === depth) {
    return `Activity focus (depth ${depth} of ${depth}): the same group activity (e.g. a left spike) in any ` +
      "match, whatever the court or uniforms look like. Built mostly from how the players move and stand.";
  }
  const share = Math.round(((f - 1) / (depth - 1)) * 100);
  return `Depth ${f} of ${depth}, between the two (about ${share} % of the way to activity): each step right ` +
    "mixes more of the players' positions and movement into their appearance. This depth still keeps some " +
    "of the match's look, so the same activity in the same match tends to come first.";
}

function showFocus() {
  const f = Number($("focus").value);
  const depth = state.info ? state.info.depth : 1;
  const name = state.info ? state.info.focus_names[f - 1] : "";
  $("focus-label").textContent = `focus ${f} of ${depth} (${name})`;
  $("focus-help").textContent = focusHelp(f, depth);
  $("focus").setAttribute("aria-valuetext", `focus ${f} of ${depth}, ${name}`);
  $("focus-ticks").querySelectorAll("span").forEach((s, i) => s.classList.toggle("on", i === f - 1));
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
    const meta = el("span", { className: "meta" }, [
      el("span", { className: "top" }, [el("span", { text: `#${r.rank}` }),
                                        el("span", { className: "dist", text: `d = ${r.distance}` })]),
      el("span", { className: "act" }, [el("span", { className: mark(knownAct, sameAct), text: activityText(r) })]),
      el("span", {}, [el("span", { className: mark(knownGroup, sameGroup), text: `group ${r.group}` })]),
      el("span", { className: "id", text: r.id }),
    ]);
    const same = [sameAct ? "same activity" : "", sameGroup ? "same group" : ""].filter(Boolean).join(", ");
    const node = card({ row: r, kind: `hit${sameGroup ? " same-group" : ""}`, width: 320, meta,
                        label: `result ${r.rank}, distance ${r.distance}: ${r.id}, ${activityText(r)}, group ` +
                               `${r.group}${same ? ` (${same})` : ""}; search with it`,
                        onPick: () => pickClip(r) });
    node.dataset.distance = String(r.distance);
    return node;
  }));
  playAll();
  status(`top ${res.results.length} at focus ${res.focus} (${res.focus_name}) · search ${res.search_ms.toFixed(2)} ms` +
         " · green: same group / same activity as the query");
}

function onFocus() {
  showFocus();
  clearTimeout(state.timer);
  state.timer = setTimeout(search, 40);  // re-run as the slider moves, at most every 40 ms
}

// ---------------------------------------------------------------- uploads and deletes
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
  const seq = ++state.seq;  // any search still running is now stale
  try {
    const form = uploadForm();
    form.append("k", $("k").value);
    form.append("focus", $("focus").value);
    status("encoding the uploaded clip…");
    const res = await api("/api/search", { method: "POST", body: form });
    if (seq !== state.seq) return;
    state.query = { query: res.query.token };
    state.queryLabels = res.query;
    document.querySelectorAll("#clip-grid .card").forEach(markSelected);
    showQuery(`/api/queries/${res.query.token}/preview.webp?width=320`,
              `uploaded clip (${res.query.persons} persons, ${res.query.frames} frames)`, res.query, true);
    showResults(res);
  } catch (err) {
    if (seq !== state.seq) return;
    clearQuery();  // the results of the previous query would read as this upload's
    clearResults();
    status(`the upload failed, nothing was searched: ${err.message}`, true);
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

async function deleteClip(id) {
  if (!window.confirm(`Delete clip ${id} from the index? Its uploaded files are removed too.`)) return;
  try {
    await api(`/api/clips/${clipPath(id)}`, { method: "DELETE" });
    status(`deleted ${id} from the index`);
    if (state.query && state.query.clip === id) {
      clearQuery();
      clearResults();
    }
    await loadIndex();
    await loadClips();
    if (document.querySelector(`#results .card[data-clip="${CSS.escape(id)}"]`)) await search();
  } catch (err) {
    status(err.message, true);
  }
}

// ---------------------------------------------------------------- wiring
function wire() {
  $("focus").addEventListener("input", onFocus);
  $("k").addEventListener("change", search);
  $("play-all").checked = HOVERLESS;
  if (NARROW.matches) $("upload").open = false;  // the clip list first; the form is one tap away
  $("play-all").addEventListener("change", playAll);
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadClips(); });
  $("next").addEventListener("click", () => { state.offset += PAGE; loadClips(); });
  for (const id of ["f-split", "f-activity", "f-group", "f-new"]) {
    $(id).addEventListener("change", () => { state.offset = 0; loadClips(); });
  }
  $("clip-grid").addEventListener("keydown", gridKeys);
  $("results").addEventListener("keydown", gridKeys);
  $("upload-form").addEventListener("submit", searchUpload);
  $("u-add").addEventListener("click", addUpload);
  $("show-attention").addEventListener("click", showAttention);
}

wire();
loadIndex().then(loadClips).catch((err) => status(err.message, true));
