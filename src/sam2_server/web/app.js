// The page's state and wiring. An image is uploaded once (the server keeps
// its embedding); every prompt change then costs one small segment request.
// `history` holds one entry per prompt added, each with the answer it got,
// so undo shows the earlier answer again without asking the server.
// "Segment everything" is a step of that history too: prompts after it start
// afresh on top of it, and undo comes back to its masks.
// A refining click names the earlier answer's candidate (`answer_id`, index)
// instead of sending its low-res logits, and asks for no logits back: a few
// hundred bytes up, the masks down. Only when the server no longer keeps that
// answer (a 404) are its logits sent packed, asked for again if need be.
// Video mode (video.js) has its own state and tools; the tabs (or I / V) switch
// between the two, and each keeps its work while the other is shown.
// A server that serves several models (GET v1/models) gets a picker in each
// mode. Every request names the model it is for; picking another while an
// image is open uploads the same file again for it and asks its prompts anew:
// nothing of the old model's (masks, answers named by answer_id) is kept.

import { Api, ApiError, REPORT, reportLine } from "./api.js";
import { everythingOverlay, parametersFromQuery } from "./everything.js";
import { download } from "./export.js";
import { maskOverlay } from "./mask.js";
import { fetchModels, nameIn, offerModels, pickerTitle, takeModel } from "./models.js";
import { base64ToBytes, candidateMaskInput, decodePacked } from "./packed.js";
import { initVideo, isVideoFile } from "./video.js";
import { Stage } from "./view.js";

const TOKEN_KEY = "sam2-server.token";
const TINT = [61, 139, 253];
// Generator parameters without a control of their own, from the page's address
// (`/?pred_iou_thresh=0.6`); the Detail select stands for points_per_side.
const ADDRESS_PARAMETERS = parametersFromQuery(location.search);

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
  everything: $("everything"),
  everythingStop: $("everything-stop"),
  everythingProgress: $("everything-progress"),
  everythingLabel: $("everything-label"),
  detail: $("detail"),
  download: $("download"),
  status: $("status"),
  error: $("error"),
  tabImage: $("tab-image"),
  tabVideo: $("tab-video"),
  keysButton: $("keys-button"),
  keysPanel: $("keys-panel"),
  model: $("model"),
  everythingWhy: $("everything-why"),
};

const state = {
  file: null, // the Blob as chosen: uploaded again if the server forgets it
  name: "",
  image: null, // {imageId, modelId, width, height} once uploaded
  // The picked model; without a picker (an older server), the model the first
  // upload got, kept so a re-upload gets the same ("" until then: the default).
  modelId: "",
  models: null, // the served models (models.js), once the server has said
  modelsRefused: false, // v1/models answered 401: asked again once a token is given
  epoch: 0, // bumped by a new image or model: an answer for an older one is dropped
  uploading: null, // the upload in flight, shared by whoever needs it
  uploadReport: null, // what the image's upload cost: the status line of the bare image
  history: [emptyEntry()],
  background: false, // what a left click adds
  busy: false,
  pending: false, // prompts changed while a request was in flight
  everything: null, // the Segment everything step whose request is in flight
  everythingAbort: null, // its AbortController: dropping the step closes the request
  shown: 0, // render sequence, so a slow decode never overwrites a newer one
  // Whether the server keeps answers for mask_input by reference (null: not known yet;
  // false: answers come without answer_id, so their logits are asked for instead).
  keepsAnswers: null,
};

const api = new Api(() => ui.token.value.trim(), report);
// The list of models is no request of the image's: its cost stays off the status line.
const modelsApi = new Api(() => ui.token.value.trim(), () => {});
const stage = new Stage({
  onPoint: (x, y, label) => addPrompt({ point: [x, y], label }),
  onBox: (box) => addPrompt({ box }),
  backgroundMode: () => state.background,
});
const video = initVideo({ getToken: () => ui.token.value.trim() });

/** An answer for an image the user has since replaced: nobody wants it. */
class Superseded extends Error {}

function emptyEntry() {
  // `automatic`: only on a Segment everything step, {body, answer, report, overlay, visible}.
  // `request`: the segment request sent for this step ({body, from}), to ask again.
  return { prompts: [], result: null, chosen: 0, automatic: null, request: null };
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
    // A refused upload (401) is retried as soon as a token is given; so is the list of models.
    if (state.modelsRefused) loadModels();
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
  state.epoch++;
  state.image = null;
  state.uploading = null;
  state.uploadReport = null;
  state.history = [emptyEntry()];
  state.pending = false;
  dropEverything();
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

/**
 * The uploaded image, uploading it first if needed (once, however many ask),
 * for the picked model. An answer for an image or a model since replaced
 * rejects with Superseded.
 */
function ensureUploaded() {
  if (state.image) return Promise.resolve(state.image);
  if (!state.uploading) {
    const file = state.file;
    const epoch = state.epoch;
    const uploading = api
      .upload(file, state.modelId)
      .then((answer) => {
        if (state.epoch !== epoch) throw new Superseded();
        if (!state.models) state.modelId = answer.model_id;
        state.uploadReport = answer[REPORT];
        state.image = {
          imageId: answer.image_id,
          modelId: answer.model_id,
          width: answer.width,
          height: answer.height,
        };
        stage.setSize(answer.width, answer.height);
        describeImage(answer.cached);
        updateControls();
        return state.image;
      })
      .finally(() => {
        if (state.uploading === uploading) state.uploading = null;
      });
    state.uploading = uploading;
    uploading.catch(() => {
      if (state.epoch === epoch) ui.info.textContent = `${state.name} · not uploaded`;
    });
  }
  return state.uploading;
}

function describeImage(cached) {
  const { width, height, modelId } = state.image;
  const model = modelName(modelId);
  ui.info.textContent = `${state.name} · ${width}×${height} · ${model} · ${cached ? "cached" : "encoded"}`;
  ui.info.title = `image ${state.image.imageId}\nmodel ${modelId}`;
}

// ---- prompts and segmenting -------------------------------------------

function addPrompt(prompt) {
  if (!state.file) return;
  clearError();
  const entry = current();
  state.history.push({ ...emptyEntry(), prompts: [...entry.prompts, prompt] });
  render();
  segment();
}

function undo() {
  if (state.history.length <= 1) return;
  if (state.history.pop() === state.everything) dropEverything(); // undoing it cancels it
  render({ undone: true });
  if (!current().result && current().prompts.length) segment();
}

function clearPrompts() {
  if (state.history.length <= 1) return;
  state.history = [emptyEntry()];
  dropEverything();
  render();
}

/** Segment the newest prompts; prompts added meanwhile are sent when it answers. */
async function segment() {
  if (state.busy) {
    state.pending = true;
    return;
  }
  state.busy = true;
  showBusy();
  try {
    do {
      state.pending = false;
      const entry = current();
      if (!entry.prompts.length || entry.result) break;
      try {
        // The body is built once the upload has answered: it names the upload's model.
        entry.request = requestFor(entry, await ensureUploaded());
        const answer = await send(entry.request);
        entry.result = resultOf(answer);
        if (entry === current()) render();
      } catch (error) {
        if (!(error instanceof Superseded)) throw error;
        // Another image or model meanwhile: whatever is current now gets its answer.
        state.pending = true;
      }
    } while (state.pending);
  } catch (error) {
    showError(error);
  } finally {
    state.busy = false;
    showBusy();
  }
}

/**
 * `call(image)` on the uploaded image; an image the server has evicted (404) is
 * uploaded again, once. `epoch`: the image and model the call is for; once
 * either is replaced it rejects with Superseded rather than ask for the new one.
 */
async function onImage(call, epoch = state.epoch) {
  const image = await stillFor(epoch, ensureUploaded());
  try {
    return await call(image);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    if (state.epoch !== epoch) throw new Superseded();
    state.image = null;
    return call(await stillFor(epoch, ensureUploaded()));
  }
}

/** `promise`'s value while `epoch` is still the page's (same image, same model); else Superseded. */
async function stillFor(epoch, promise) {
  const value = await promise;
  if (state.epoch !== epoch) throw new Superseded();
  return value;
}

/**
 * The segment request for `entry`: `body`, its points and its last box in image
 * pixels, and `from`, the earlier answer it refines ({entry, index}, or null).
 * A single point is ambiguous, so it asks for three candidates; later prompts
 * refine the chosen candidate of the answer before, named by reference (the
 * server keeps its low-res logits). No logits come back: the page needs them
 * only from a server that keeps no answers.
 */
function requestFor(entry, image) {
  const points = entry.prompts.filter((p) => p.point);
  const boxes = entry.prompts.filter((p) => p.box);
  const body = {
    model_id: image.modelId || undefined,
    mask_format: "png",
    return_logits: state.keepsAnswers === false,
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
    if (earlier.automatic) break; // the prompts started afresh there
    if (earlier.result) {
      const { answerId, logits } = earlier.result;
      if (answerId) body.mask_input = { answer_id: answerId, index: earlier.chosen };
      else if (logits) body.mask_input = candidateMaskInput(logits, earlier.chosen);
      return { body, from: { entry: earlier, index: earlier.chosen }, epoch: state.epoch };
    }
  }
  return { body, from: null, epoch: state.epoch };
}

/**
 * POST a segment request ({body, from}, see requestFor). When its mask_input
 * names an answer the server no longer keeps (a 404: evicted, restarted, or gone
 * with its image), the same prompt goes once more with that candidate's logits
 * packed; the page asks for them again if it has none (logitsOf). An image the
 * server evicted is uploaded again (onImage).
 */
async function send({ body, from, epoch }) {
  if (from && body.mask_input && body.mask_input.answer_id) {
    const image = await stillFor(epoch, ensureUploaded());
    try {
      return await api.segment(image.imageId, body);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
    }
    body = { ...body, mask_input: null };
  }
  if (from && !body.mask_input) {
    body = { ...body, mask_input: candidateMaskInput(await logitsOf(from.entry), from.index) };
  }
  return onImage((image) => api.segment(image.imageId, body), epoch);
}

/**
 * An earlier answer's low-res logits: kept (a server that keeps no answers sends
 * them), or asked for again with that step's own request and return_logits, which
 * gives the same answer, logits included.
 */
async function logitsOf(entry) {
  if (!entry.result.logits) {
    const { body, from, epoch } = entry.request;
    const answer = await send({ body: { ...body, return_logits: true }, from, epoch });
    if (!answer.logits) throw new Error("The server sent no logits to refine with.");
    entry.result.logits = decodePacked(answer.logits);
    if (typeof answer.answer_id === "string") entry.result.answerId = answer.answer_id; // kept anew
  }
  return entry.result.logits;
}

/** The Detail select's grid, over whatever the page's address gives, for the image's model. */
function automaticBody(image) {
  const pointsPerSide = Number(ui.detail.value);
  return {
    ...ADDRESS_PARAMETERS,
    model_id: image.modelId || undefined,
    mask_format: "rle",
    points_per_side: Number.isFinite(pointsPerSide) ? pointsPerSide : ui.detail.value,
  };
}

function resultOf(answer) {
  // One object: masks is C masks (B lists of C only with several boxes).
  const masks = Array.isArray(answer.masks[0]) ? answer.masks[0] : answer.masks;
  const scores = Array.isArray(answer.scores[0]) ? answer.scores[0] : answer.scores;
  const answerId = typeof answer.answer_id === "string" ? answer.answer_id : null;
  state.keepsAnswers = answerId !== null;
  return {
    masks,
    scores,
    report: answer[REPORT],
    answerId, // names the logits on the server, for the next refining click
    logits: answer.logits ? decodePacked(answer.logits) : null,
    width: answer.width,
    height: answer.height,
    overlays: [],
  };
}

// ---- segment everything ------------------------------------------------

/**
 * Every mask of the image, as one step of `history`, pushed at once: prompts
 * added while it runs go on top of it (the answer then waits for an undo).
 * Stop, Clear, an undo of the step, or another image drops it: its request is
 * aborted (the server stops computing when the connection closes), shows no
 * error, and an answer that still comes is never drawn. It can take a while
 * (the grid is points_per_side² prompts), so the button counts seconds and a
 * bar counts the batches of points the server has done (its NDJSON progress),
 * with the time left at the rate so far.
 */
async function segmentEverything() {
  if (!state.image || state.everything || !automaticMasks()) return;
  clearError();
  const entry = { ...emptyEntry(), automatic: { body: null, answer: null, overlay: null, visible: 0 } };
  const abort = new AbortController();
  state.history.push(entry);
  state.everything = entry;
  state.everythingAbort = abort;
  render();
  showBusy();
  const started = performance.now();
  const progress = { done: 0, total: 0, firstAt: 0, at: 0, started };
  const tick = () => {
    if (state.everything !== entry) return;
    ui.everything.textContent = `Segmenting… ${Math.floor((performance.now() - started) / 1000)} s`;
    showProgress(progress);
  };
  tick();
  const timer = setInterval(tick, 1000);
  const onProgress = (done, total) => {
    if (state.everything !== entry) return;
    const now = performance.now();
    if (!progress.firstAt) progress.firstAt = now;
    Object.assign(progress, { done, total, at: now });
    showProgress(progress);
  };
  try {
    const answer = await onImage((image) => {
      entry.automatic.body = automaticBody(image);
      return api.automaticMasks(image.imageId, entry.automatic.body, abort.signal, onProgress);
    });
    if (abort.signal.aborted || !state.history.includes(entry)) return; // nobody wants it
    let drawn;
    try {
      drawn = everythingOverlay(answer.masks, answer.width, answer.height);
    } catch (error) {
      throw new Error(`Could not draw the automatic masks: ${error.message}`);
    }
    Object.assign(entry.automatic, { answer, report: answer[REPORT], ...drawn });
  } catch (error) {
    const at = state.history.indexOf(entry);
    // Dropped meanwhile (aborted, or failed before it could be): nobody's concern either.
    if (abort.signal.aborted || at < 0) return;
    state.history.splice(at, 1); // a failed step is nothing to come back to
    showError(error);
  } finally {
    clearInterval(timer);
    if (state.everything === entry) {
      dropEverything();
      render();
    }
  }
}

/** Abort the request in flight (an answer already on its way is dropped): the button is free again. */
function dropEverything() {
  if (state.everythingAbort) state.everythingAbort.abort();
  state.everythingAbort = null;
  state.everything = null;
  ui.everything.textContent = "Segment everything";
  showProgress(null);
  showBusy();
}

/** Stop: Segment everything's step is dropped (the server stops), the page as it was before. */
function stopEverything() {
  const entry = state.everything;
  if (!entry) return;
  const at = state.history.indexOf(entry);
  const last = at === state.history.length - 1;
  dropEverything();
  if (at >= 0) state.history.splice(at, 1);
  render({ undone: last });
  if (last && !current().result && current().prompts.length) segment();
}

/**
 * The bar of batches done ({done, total, firstAt, at, started}; null hides it)
 * and the time left at the rate so far: the batches after the first (which also
 * waited for the request and its admission), or the first alone.
 */
function showProgress(progress) {
  const running = progress !== null;
  ui.everythingProgress.hidden = !running;
  ui.everythingStop.hidden = !running;
  if (!running) {
    ui.everythingLabel.textContent = "";
    return;
  }
  const { done, total } = progress;
  ui.everythingProgress.max = Math.max(total, 1);
  if (!total) {
    ui.everythingProgress.removeAttribute("value"); // indeterminate until the first batch ends
    ui.everythingLabel.textContent = "waiting for the first batch of points…";
    return;
  }
  ui.everythingProgress.value = done;
  const each = done > 1 ? (progress.at - progress.firstAt) / (done - 1) : progress.at - progress.started;
  const left = Math.max(0, (total - done) * each - (performance.now() - progress.at));
  const estimate = done < total ? ` · about ${duration(left)} left` : " · writing the masks";
  ui.everythingLabel.textContent = `${done} / ${total} batches${estimate}`;
}

function duration(ms) {
  const seconds = Math.max(1, Math.round(ms / 1000));
  return seconds < 90 ? `${seconds} s` : `${Math.round(seconds / 60)} min`;
}

function showEverything(automatic) {
  state.shown++; // a candidate still decoding must not draw over these
  stage.setMask(automatic.overlay);
  const count = automatic.answer.masks.length;
  const side = automatic.body.points_per_side;
  const parts = [`${count} ${count === 1 ? "mask" : "masks"}`, `${side}×${side} points`];
  if (count === 0) parts[0] += " (none passed the quality thresholds)";
  const hidden = count - automatic.visible;
  if (hidden > 0) parts.push(`${hidden} hidden under smaller ones`);
  showStatus(automatic.report, parts.join(" · "));
}

// ---- drawing -----------------------------------------------------------

/**
 * Draw the newest step of `history`: its prompts, candidates and answer, and
 * the status line for that answer (its request and its masks). `undone`: an
 * undo brought this step back, so a mask still up belongs to the step undone.
 */
function render({ undone = false } = {}) {
  const entry = current();
  stage.setPrompts(entry.prompts);
  updateControls();
  renderCandidates(entry);
  if (entry.automatic && entry.automatic.overlay) {
    showEverything(entry.automatic);
  } else if (entry.result) {
    showMask(entry.result, entry.chosen);
  } else if (entry.automatic || !entry.prompts.length || undone) {
    // The image alone: no prompts, the automatic masks still on their way
    // (not the last prompt's mask without its prompts), or an undo back to
    // prompts whose answer is asked for again.
    showImageAlone();
  }
  // Otherwise (a prompt just added) the previous mask stays up until the new answer arrives.
}

function showImageAlone() {
  state.shown++; // a mask still decoding must not draw over the image
  stage.setMask(null);
  showStatus(state.uploadReport, "");
}

function updateControls() {
  ui.undo.disabled = state.history.length <= 1;
  ui.clear.disabled = state.history.length <= 1;
  ui.download.disabled = !current().result;
  const automatic = automaticMasks();
  ui.everything.disabled = !state.image || state.everything !== null || !automatic;
  const why = `not with ${modelName(state.modelId)}: this model does not generate automatic masks`;
  ui.everythingWhy.textContent = automatic ? "" : why;
}

/** Whether the picked model makes automatic masks (true when the server has not said). */
function automaticMasks() {
  const model = state.models && state.models.find((m) => m.id === state.modelId);
  return !model || model.automatic;
}

function modelName(id) {
  return nameIn(state.models, id, "this model");
}

// ---- models ------------------------------------------------------------

/**
 * Ask which models the server serves and show the pickers. An older server
 * (no such route) or a failure leaves the page as it was: no picker, no
 * model_id sent but the one the first upload got; a 401 is asked again once
 * a token is given.
 */
async function loadModels() {
  state.modelsRefused = false;
  let models;
  try {
    models = await fetchModels(modelsApi);
  } catch (error) {
    state.modelsRefused = error instanceof ApiError && error.status === 401;
    return;
  }
  if (!models.length) return;
  state.models = models;
  // An image uploaded before the list came keeps the model it has (the default then).
  const { chosen, current } = offerModels(ui.model, models, state.modelId, { keep: state.modelId });
  state.modelId = current;
  if (chosen !== state.modelId) pickModel(chosen);
  else showModel();
  video.setModels(models);
}

function showModel() {
  const what = "Picking another encodes the open image for it and asks its prompts again.";
  ui.model.title = pickerTitle(state.models, state.modelId, what);
  updateControls();
}

/**
 * Use model `id` from now on. With an image open, the same file is uploaded
 * again for it (its embedding is the new model's), every mask and answer of the
 * old model is dropped (so no refinement names one of its answer_id), and the
 * prompts on screen are asked again of the new model: one pick compares two
 * models on the same clicks. Undo then goes back to the image alone.
 */
function pickModel(id) {
  if (!takeModel(state, ui.model, id)) return;
  showModel();
  if (!state.file) return;
  clearError();
  const entry = current();
  const prompts = entry.automatic ? [] : entry.prompts; // Segment everything is not asked again: it is slow
  state.epoch++;
  state.image = null;
  state.uploading = null;
  state.uploadReport = null;
  state.pending = false;
  dropEverything();
  state.history = [emptyEntry()];
  if (prompts.length) state.history.push({ ...emptyEntry(), prompts: [...prompts] });
  render({ undone: true }); // the image alone until the new model answers
  ui.info.textContent = `${state.name} · encoding for ${modelName(id)}…`;
  ensureUploaded().catch(showError);
  if (prompts.length) segment();
}

function showBusy() {
  stage.root.classList.toggle("busy", state.busy || state.everything !== null);
  ui.everything.setAttribute("aria-busy", String(state.everything !== null));
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
    showStatus(result.report, `${of}score ${score} · ${area.toLocaleString("en")} px`);
  } catch (error) {
    showError(new Error(`Could not decode the mask: ${error.message}`));
  }
}

// ---- status and errors -------------------------------------------------
// The status line says what is on screen: the request that brought the answer
// shown (the upload's, for the image alone) and that answer's masks. Each
// request's line also shows as soon as it ends (a failure's too); drawing an
// answer, an undo or a clear then puts the line of what is shown back.

function report(done) {
  ui.status.dataset.request = reportLine(done);
  if (done.what === "upload") ui.status.dataset.mask = "";
  updateStatus();
}

/** The request that brought what is shown (a report, or null), and what the overlay shows. */
function showStatus(request, mask) {
  ui.status.dataset.request = request ? reportLine(request) : "";
  ui.status.dataset.mask = mask;
  updateStatus();
}

function updateStatus() {
  ui.status.textContent = [ui.status.dataset.request, ui.status.dataset.mask].filter(Boolean).join(" · ");
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
  const name = `${state.name.replace(/\.[^.]*$/, "") || "image"}-mask.png`;
  download(new Blob([png], { type: "image/png" }), name, 10000);
}

// ---- modes and the list of keys ----------------------------------------

function mode() {
  return document.body.dataset.mode;
}

function setMode(next) {
  if (next === mode()) return;
  document.body.dataset.mode = next;
  ui.tabImage.setAttribute("aria-selected", String(next === "image"));
  ui.tabVideo.setAttribute("aria-selected", String(next === "video"));
  if (next === "video") video.activate();
  else video.deactivate();
}

function toggleKeys(show = ui.keysPanel.hidden) {
  ui.keysPanel.hidden = !show;
  ui.keysButton.setAttribute("aria-expanded", String(show));
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
  ui.everything.addEventListener("click", segmentEverything);
  ui.model.addEventListener("change", () => pickModel(ui.model.value));
  ui.everythingStop.addEventListener("click", stopEverything);

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
    const files = [...event.dataTransfer.files];
    // A video file opens video mode; in video mode, images are its frames.
    if (mode() === "video" || files.some(isVideoFile)) {
      setMode("video");
      video.open(files);
    } else {
      openFile(firstImage(files));
    }
  });
  window.addEventListener("paste", (event) => {
    if (mode() !== "image") return;
    const file = firstImage(event.clipboardData && event.clipboardData.files);
    if (file) openFile(file);
  });

  ui.tabImage.addEventListener("click", () => setMode("image"));
  ui.tabVideo.addEventListener("click", () => setMode("video"));
  ui.keysButton.addEventListener("click", () => toggleKeys());

  window.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    if (pageKey(event) || (mode() === "video" ? video.onKey(event) : imageKey(event))) event.preventDefault();
  });
}

/** The keys of both modes; true when the key was one. */
function pageKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return false;
  if (event.key === "?") toggleKeys();
  else if (event.key === "Escape" && !ui.keysPanel.hidden) toggleKeys(false);
  else if (event.key === "i") setMode("image");
  else if (event.key === "v") setMode("video");
  else return false;
  return true;
}

/** Image mode's keys; true when the key was one. */
function imageKey(event) {
  const entry = current();
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") undo();
  else if (event.ctrlKey || event.metaKey || event.altKey) return false;
  else if (event.key === "Escape") clearPrompts();
  else if (event.key === "b") setBackground(true);
  else if (event.key === "f") setBackground(false);
  else if (event.key === "e") segmentEverything();
  else if (event.key === "ArrowRight") choose(entry.chosen + 1);
  else if (event.key === "ArrowLeft") choose(entry.chosen - 1);
  else if (/^[1-9]$/.test(event.key) && entry.result && Number(event.key) <= entry.result.masks.length) {
    choose(Number(event.key) - 1);
  } else return false;
  return true;
}

/** A points_per_side from the page's address shows in the Detail select, as an option of its own if need be. */
function initDetail() {
  const side = ADDRESS_PARAMETERS.points_per_side;
  if (side === undefined) return;
  const value = String(side);
  if (![...ui.detail.options].some((option) => option.value === value)) {
    ui.detail.add(new Option(`${value}×${value} points`, value));
  }
  ui.detail.value = value;
}

initToken();
initDetail();
wire();
render();
loadModels();
