// The page's state and wiring. An image is uploaded once (the server keeps
// its embedding); every prompt change then costs one small segment request.
// `history` holds one entry per prompt added, each with the answer it got,
// so undo shows the earlier answer again without asking the server.

import { Api, ApiError } from "./api.js";
import { maskOverlay } from "./mask.js";
import { base64ToBytes, candidateMaskInput, decodePacked } from "./packed.js";
import { Stage } from "./view.js";

const TOKEN_KEY = "sam2-server.token";
const TINT = [61, 139, 253];

const $ = (id) => document.getElementById(id);
const ui = {
  file: $("file"),
  token: $("token"),
  info: $("image-info"),
  modeFg: $("mode-fg"),
  modeBg: $("mode-bg"),
  undo: $("undo"),
  clear: $("clear"),
  candidates: $("candidates"),
  download: $("download"),
  status: $("status"),
  error: $("error"),
};

const state = {
  file: null, // the Blob as chosen: uploaded again if the server forgets it
  name: "",
  image: null, // {imageId, modelId, width, height} once uploaded
  modelId: "", // the model the first upload got; kept so a re-upload gets the same
  uploading: null, // the upload in flight, shared by whoever needs it
  history: [emptyEntry()],
  background: false, // what a left click adds
  busy: false,
  pending: false, // prompts changed while a request was in flight
  shown: 0, // render sequence, so a slow decode never overwrites a newer one
};

const api = new Api(() => ui.token.value.trim(), report);
const stage = new Stage({
  onPoint: (x, y, label) => addPrompt({ point: [x, y], label }),
  onBox: (box) => addPrompt({ box }),
  backgroundMode: () => state.background,
});

/** An answer for an image the user has since replaced: nobody wants it. */
class Superseded extends Error {}

function emptyEntry() {
  return { prompts: [], result: null, chosen: 0 };
}

function current() {
  return state.history[state.history.length - 1];
}

// ---- token -------------------------------------------------------------

function initToken() {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromUrl !== null) {
    saveToken(fromUrl);
    // Keep the secret out of the address bar, the history and bookmarks.
    history.replaceState(null, "", location.pathname + location.search);
  }
  try {
    ui.token.value = localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    ui.token.value = fromUrl || "";
  }
  ui.token.addEventListener("input", () => saveToken(ui.token.value.trim()));
  // Enter in the field applies the token; nothing is ever submitted.
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    ui.token.blur();
  });
  ui.token.addEventListener("change", () => {
    // A refused upload (401) is retried as soon as a token is given.
    if (state.file && !state.image && !state.uploading) ensureUploaded().catch(showError);
  });
}

function saveToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the field still works for this visit
  }
  if (ui.token.value.trim() !== token) ui.token.value = token;
}

// ---- image -------------------------------------------------------------

async function openFile(file) {
  if (!file) return;
  clearError();
  state.file = file;
  state.name = file.name || "pasted image";
  state.image = null;
  state.uploading = null;
  state.history = [emptyEntry()];
  state.pending = false;
  stage.setMask(null);
  render();
  try {
    await stage.show(file);
  } catch {
    showError(new Error(`This browser cannot display ${state.name}; the server may still read it.`));
  }
  ui.info.textContent = `${state.name} · uploading…`;
  ensureUploaded().catch(showError);
}

/** The uploaded image, uploading it first if needed (once, however many ask). */
function ensureUploaded() {
  if (state.image) return Promise.resolve(state.image);
  if (!state.uploading) {
    const file = state.file;
    state.uploading = api
      .upload(file, state.modelId)
      .then((answer) => {
        if (state.file !== file) throw new Superseded();
        state.modelId = answer.model_id;
        state.image = {
          imageId: answer.image_id,
          modelId: answer.model_id,
          width: answer.width,
          height: answer.height,
        };
        stage.setSize(answer.width, answer.height);
        describeImage(answer.cached);
        return state.image;
      })
      .finally(() => {
        if (state.file === file) state.uploading = null;
      });
    state.uploading.catch(() => {
      ui.info.textContent = `${state.name} · not uploaded`;
    });
  }
  return state.uploading;
}

function describeImage(cached) {
  const { width, height, modelId } = state.image;
  const model = modelId.split("/").pop();
  ui.info.textContent = `${state.name} · ${width}×${height} · ${model} · ${cached ? "cached" : "encoded"}`;
  ui.info.title = `image ${state.image.imageId}\nmodel ${modelId}`;
}

// ---- prompts and segmenting -------------------------------------------

function addPrompt(prompt) {
  if (!state.file) return;
  clearError();
  const entry = current();
  state.history.push({ prompts: [...entry.prompts, prompt], result: null, chosen: 0 });
  render();
  segment();
}

function undo() {
  if (state.history.length <= 1) return;
  state.history.pop();
  render();
  if (!current().result && current().prompts.length) segment();
}

function clearPrompts() {
  if (state.history.length <= 1) return;
  state.history = [emptyEntry()];
  render();
}

/** Segment the newest prompts; prompts added meanwhile are sent when it answers. */
async function segment() {
  if (state.busy) {
    state.pending = true;
    return;
  }
  state.busy = true;
  stage.root.classList.add("busy");
  try {
    do {
      state.pending = false;
      const entry = current();
      if (!entry.prompts.length || entry.result) break;
      const image = await ensureUploaded();
      const answer = await segmentOnce(image, requestFor(entry));
      entry.result = resultOf(answer);
      if (entry === current()) render();
    } while (state.pending);
  } catch (error) {
    showError(error);
  } finally {
    state.busy = false;
    stage.root.classList.remove("busy");
  }
}

/** One segment call; an image the server has evicted is uploaded again, once. */
async function segmentOnce(image, body) {
  try {
    return await api.segment(image.imageId, body);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    state.image = null;
    const again = await ensureUploaded();
    return api.segment(again.imageId, body);
  }
}

/**
 * The JSON prompt for `entry`: its points and its last box, in image pixels.
 * A single point is ambiguous, so it asks for three candidates; later prompts
 * refine the chosen candidate of the answer before (its low-res logits).
 */
function requestFor(entry) {
  const points = entry.prompts.filter((p) => p.point);
  const boxes = entry.prompts.filter((p) => p.box);
  const body = {
    model_id: state.modelId || undefined,
    mask_format: "png",
    return_logits: true,
    multimask_output: points.length === 1 && boxes.length === 0,
  };
  if (points.length) {
    body.points = points.map((p) => p.point);
    body.labels = points.map((p) => p.label);
  }
  if (boxes.length) body.box = boxes[boxes.length - 1].box;
  const index = state.history.indexOf(entry);
  for (let i = index - 1; i > 0; i--) {
    const earlier = state.history[i];
    if (earlier.result && earlier.result.logits) {
      body.mask_input = candidateMaskInput(earlier.result.logits, earlier.chosen);
      break;
    }
  }
  return body;
}

function resultOf(answer) {
  // One object: masks is C masks (B lists of C only with several boxes).
  const masks = Array.isArray(answer.masks[0]) ? answer.masks[0] : answer.masks;
  const scores = Array.isArray(answer.scores[0]) ? answer.scores[0] : answer.scores;
  return {
    masks,
    scores,
    logits: answer.logits ? decodePacked(answer.logits) : null,
    width: answer.width,
    height: answer.height,
    overlays: [],
  };
}

// ---- drawing -----------------------------------------------------------

function render() {
  const entry = current();
  stage.setPrompts(entry.prompts);
  ui.undo.disabled = state.history.length <= 1;
  ui.clear.disabled = state.history.length <= 1;
  renderCandidates(entry);
  ui.download.disabled = !entry.result;
  if (entry.result) {
    showMask(entry.result, entry.chosen);
  } else if (!entry.prompts.length) {
    state.shown++;
    stage.setMask(null);
  }
  // Otherwise the previous mask stays up until the new answer arrives.
}

function renderCandidates(entry) {
  ui.candidates.replaceChildren();
  const result = entry.result;
  if (!result || result.masks.length < 2) return;
  result.scores.forEach((score, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${i + 1} · ${Number(score).toFixed(3)}`;
    button.title = `Candidate ${i + 1} of ${result.masks.length}: predicted IoU ${score}`;
    button.setAttribute("aria-pressed", String(i === entry.chosen));
    button.dataset.candidate = String(i);
    button.addEventListener("click", () => choose(i));
    ui.candidates.append(button);
  });
}

function choose(index) {
  const entry = current();
  if (!entry.result) return;
  const count = entry.result.masks.length;
  entry.chosen = ((index % count) + count) % count;
  render();
}

async function showMask(result, index) {
  const seq = ++state.shown;
  try {
    if (!result.overlays[index]) {
      result.overlays[index] = await maskOverlay(result.masks[index], result.width, result.height, TINT);
    }
    if (seq !== state.shown) return;
    stage.setMask(result.overlays[index].overlay);
    const area = result.overlays[index].area;
    const score = Number(result.scores[index]).toFixed(3);
    const of = result.masks.length > 1 ? `mask ${index + 1}/${result.masks.length} · ` : "";
    ui.status.dataset.mask = `${of}score ${score} · ${area.toLocaleString("en")} px`;
    ui.status.textContent = [ui.status.dataset.request, ui.status.dataset.mask].filter(Boolean).join(" · ");
  } catch (error) {
    showError(new Error(`Could not decode the mask: ${error.message}`));
  }
}

// ---- status and errors -------------------------------------------------

function report({ what, status, sent, received, ms }) {
  const code = status ? `${status}` : "no answer";
  ui.status.dataset.request = `${what} ${code} · ↑ ${bytes(sent)} ↓ ${bytes(received)} · ${Math.round(ms)} ms`;
  if (what === "upload") ui.status.dataset.mask = "";
  ui.status.textContent = [ui.status.dataset.request, ui.status.dataset.mask].filter(Boolean).join(" · ");
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(2)} MB`;
}

function showError(error) {
  if (error instanceof Superseded) return;
  let text = error.message;
  if (error instanceof ApiError && error.status === 401) {
    text += " (401: check the token field)";
    ui.token.focus();
  } else if (error instanceof ApiError && error.status) {
    text += ` (${error.status})`;
  }
  ui.error.textContent = text;
}

function clearError() {
  ui.error.textContent = "";
}

// ---- controls ----------------------------------------------------------

function setBackground(on) {
  state.background = on;
  ui.modeFg.setAttribute("aria-pressed", String(!on));
  ui.modeBg.setAttribute("aria-pressed", String(on));
}

function downloadMask() {
  const entry = current();
  if (!entry.result) return;
  const png = base64ToBytes(entry.result.masks[entry.chosen]);
  const url = URL.createObjectURL(new Blob([png], { type: "image/png" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = `${state.name.replace(/\.[^.]*$/, "") || "image"}-mask.png`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function firstImage(fileList) {
  return [...(fileList || [])].find((f) => f.type.startsWith("image/")) || (fileList || [])[0];
}

function wire() {
  ui.file.addEventListener("change", () => {
    openFile(ui.file.files[0]);
    ui.file.value = ""; // choosing the same file again still opens it
  });
  ui.modeFg.addEventListener("click", () => setBackground(false));
  ui.modeBg.addEventListener("click", () => setBackground(true));
  ui.undo.addEventListener("click", undo);
  ui.clear.addEventListener("click", clearPrompts);
  ui.download.addEventListener("click", downloadMask);

  let depth = 0;
  window.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth++;
    document.body.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    if (--depth <= 0) {
      depth = 0;
      document.body.classList.remove("dragging");
    }
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    openFile(firstImage(event.dataTransfer.files));
  });
  window.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData && event.clipboardData.files);
    if (file) openFile(file);
  });

  window.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    const entry = current();
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") undo();
    else if (event.ctrlKey || event.metaKey || event.altKey) return;
    else if (event.key === "Escape") clearPrompts();
    else if (event.key === "b") setBackground(true);
    else if (event.key === "f") setBackground(false);
    else if (event.key === "ArrowRight") choose(entry.chosen + 1);
    else if (event.key === "ArrowLeft") choose(entry.chosen - 1);
    else if (/^[1-9]$/.test(event.key) && entry.result && Number(event.key) <= entry.result.masks.length) {
      choose(Number(event.key) - 1);
    } else return;
    event.preventDefault();
  });
}

initToken();
wire();
render();
