// Video mode: one clip uploaded once to a video session (docs/video.md), then
// objects prompted on any frame, tracked forwards or backwards as the server
// streams each frame's masks, played back from the stored masks, exported.
//
// What the page holds mirrors the server's session: `prompts` (per object and
// frame, every point and box sent, resent whole with clear_old_points) and
// `results` (per frame, each object's mask as the server's last answer for
// that frame gave it: a prompt's answer or a propagation's line). Requests on
// the session go one at a time, in order (`enqueue`): the server answers a
// second one meanwhile with a 409.
//
// A session is one model's from start to end. The model picker (when the
// server lists its models) chooses the model of the next session: picking
// another while a clip is open re-opens it at once when nothing would be lost
// (still uploading, or nothing prompted yet); otherwise the session stays on
// its model, and the page says so and offers "Re-open with <model>".

import { Api, ApiError, reportLine } from "./api.js";
import { maskColour, ownerOverlay, paintRle } from "./everything.js";
import { cocoJson, decodeMask, download, encodePngGray, maskPath, zipStore } from "./export.js";
import { FrameSource } from "./frames.js";
import { nameIn, offerModels, pickerTitle, takeModel } from "./models.js";
import { VideoApi } from "./videoapi.js";
import { Stage } from "./view.js";

const DEFAULT_FPS = 10; // playback of frame images, which carry no frame rate
// Objects' colours, apart from the points' green and red; then evenly spread hues.
const OBJECT_COLOURS = [
  [61, 139, 253], // blue
  [255, 146, 28], // orange
  [178, 102, 255], // violet
  [0, 199, 190], // teal
  [255, 214, 10], // yellow
  [255, 92, 170], // pink
  [140, 98, 57], // brown
  [200, 200, 200], // grey
];
const BUSY_WAIT_MS = 10000; // after Stop, the server frees the session within a frame
const BIG_STEP = 10; // Shift+←/→

const $ = (id) => document.getElementById(id);

/**
 * Wire video mode to the page's elements.
 * @param {{getToken: () => string}} options the Token field's value
 */
export function initVideo({ getToken }) {
  // Its own Api: each request's cost goes to video mode's line, not the image's.
  const videoApi = new VideoApi(new Api(getToken, showRequest));
  const ui = {
    file: $("video-file"),
    info: $("video-info"),
    token: $("token"),
    fg: $("v-fg"),
    bg: $("v-bg"),
    objects: $("v-objects"),
    newObject: $("v-new-object"),
    remove: $("v-remove"),
    trackBack: $("v-track-back"),
    track: $("v-track"),
    stop: $("v-stop"),
    play: $("v-play"),
    reset: $("v-reset"),
    close: $("v-close"),
    reopen: $("v-reopen"),
    exportZip: $("v-export-zip"),
    exportJson: $("v-export-json"),
    prev: $("v-prev"),
    next: $("v-next"),
    frameLabel: $("v-frame-label"),
    strip: $("v-strip"),
    progress: $("v-progress"),
    progressLabel: $("v-progress-label"),
    status: $("v-status"),
    request: $("v-request"),
    error: $("v-error"),
    stageRoot: $("v-stage"),
    model: $("v-model"),
  };

  const vs = {
    epoch: 0, // bumped by each new clip or close: late answers for an old one are dropped
    kind: null, // "frames" | "video"
    files: [],
    name: "",
    notes: [], // what to say about the clip once open (a file left out, a picture not shown)
    shownSize: null, // {width, height} as the browser shows the clip
    displayable: false,
    uploading: null, // AbortController of the upload in flight
    refused: false, // the last upload was a 401: a new token tries again
    session: null, // {videoId, modelId, frames, width, height, fps}: kept once expired, for export
    modelId: "", // the picked model (without a picker: the first session's, "" before: the default)
    models: null, // the served models (models.js), once the server has said
    uploadingModel: "", // the model the upload in flight names
    expired: false, // the server has forgotten the session (404): `live()` is false
    playbackFps: DEFAULT_FPS, // Play's rate: the clip's frame rate, once the session says
    frame: 0, // the frame asked for
    shownFrame: -1, // the frame on screen (its picture decoded)
    objects: [], // [{id, rgb, css, prompted}] in the order added
    active: null,
    nextId: 1,
    prompts: new Map(), // "object:frame" → {objectId, frame, points: [{point, label}], box}
    results: new Map(), // frame → Map(objectId → {size, counts})
    queue: Promise.resolve(),
    pending: 0, // requests queued or running
    tracking: null, // {reverse, done, total, abort, follow, started}
    stoppedAt: -Infinity,
    playing: null,
    exporting: false,
    background: false,
  };

  const source = new FrameSource($("v-photo"), $("v-video"));
  const stage = new Stage(
    {
      onPoint: (x, y, label) => addPrompt({ point: [x, y], label }),
      onBox: (box) => addPrompt({ box }),
      backgroundMode: () => vs.background,
    },
    { wrap: "v-stage-wrap", root: "v-stage", photo: "v-photo", mask: "v-mask", marks: "v-marks" },
    { allBoxes: true },
  );

  /** A session the server still holds, as far as the page knows. */
  function live() {
    return Boolean(vs.session) && !vs.expired;
  }

  // ---- opening a clip ----------------------------------------------------

  /** Open a video file or frame images (from the file picker or a drop). */
  async function open(fileList) {
    const files = [...(fileList || [])];
    if (!files.length) return;
    clearError();
    showStatus("");
    const videos = files.filter(isVideoFile);
    const images = files.filter((f) => !isVideoFile(f));
    const notes = []; // said once the server has opened it (an upload failure matters more meanwhile)
    let kind;
    let chosen;
    if (videos.length) {
      kind = "video";
      chosen = [videos[0]];
      if (files.length > 1) notes.push(`only ${videos[0].name} was opened: a session is one video file, or frame images`);
    } else {
      kind = "frames";
      chosen = images.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    }
    closeSession({ quiet: true }); // a new epoch: whatever is in flight for the old clip is dropped
    const epoch = vs.epoch;
    Object.assign(vs, {
      kind,
      files: chosen,
      name: kind === "video" ? chosen[0].name || "video" : framesName(chosen),
      frame: 0,
      shownFrame: -1,
      shownSize: null,
      displayable: false,
      notes,
    });
    ui.stageRoot.classList.remove("empty");
    ui.stageRoot.dataset.kind = kind;
    try {
      vs.shownSize = await source.load(kind, chosen);
      if (epoch !== vs.epoch) return;
      vs.displayable = true;
      stage.setSize(vs.shownSize.width, vs.shownSize.height);
      vs.shownFrame = 0;
    } catch (error) {
      if (epoch !== vs.epoch) return;
      notes.push(`this browser cannot display ${vs.name} (${error.message}), so the masks are drawn on black`);
    }
    render();
    if (notes.length) showStatus(`Note: ${notes.join("; ")}.`);
    upload(epoch);
  }

  /** Upload the clip (again, after it expired); the answer makes the session. */
  async function upload(epoch = vs.epoch) {
    if (!vs.files.length || vs.uploading) return;
    clearError();
    const abort = new AbortController();
    vs.uploading = abort;
    vs.uploadingModel = vs.modelId;
    vs.expired = false;
    vs.refused = false;
    ui.info.textContent = `${vs.name} · uploading…`;
    setProgress(0, 1, "Uploading…");
    render();
    try {
      const body = vs.kind === "video" ? { video: vs.files[0] } : { frames: vs.files };
      const answer = await videoApi.open(body, vs.modelId, (sent, total) => {
        if (epoch !== vs.epoch) return;
        const percent = total ? Math.floor((100 * sent) / total) : 0;
        setProgress(sent, total || 1, sent >= total ? "Decoding on the server…" : `Uploading ${percent}%`);
      }, abort.signal);
      if (epoch !== vs.epoch) {
        videoApi.close(answer.video_id).catch(() => {}); // opened for a clip since replaced
        return;
      }
      vs.session = {
        videoId: answer.video_id,
        modelId: answer.model_id,
        frames: answer.frames,
        width: answer.width,
        height: answer.height,
        fps: answer.fps,
      };
      if (!vs.models) vs.modelId = answer.model_id;
      onSession();
    } catch (error) {
      if (epoch !== vs.epoch || (error && error.name === "AbortError")) return;
      ui.info.textContent = `${vs.name} · not uploaded`;
      vs.refused = error instanceof ApiError && error.status === 401;
      showError(error);
    } finally {
      if (vs.uploading === abort) vs.uploading = null;
      if (epoch === vs.epoch) {
        hideProgress();
        render();
      }
    }
  }

  function onSession() {
    const session = vs.session;
    const warnings = [...vs.notes];
    let fps = session.fps;
    if (vs.kind === "video") {
      const duration = source.duration;
      if (!fps && Number.isFinite(duration) && duration > 0) fps = session.frames / duration;
      if (fps && Number.isFinite(duration) && Math.abs(duration * fps - session.frames) > 1.5) {
        warnings.push(
          `the browser times this clip at ${duration.toFixed(2)} s, ${Math.round(duration * fps)} frames at ` +
            `${fps.toFixed(2)} fps, the server counts ${session.frames}: a picture may be a frame or more off ` +
            "its masks (a variable frame rate?)",
        );
      }
      source.setTiming(session.frames, fps || DEFAULT_FPS);
    }
    vs.playbackFps = fps || DEFAULT_FPS;
    if (vs.kind === "frames" && session.frames !== vs.files.length) {
      warnings.push(`the server counts ${session.frames} frames, ${vs.files.length} were sent`);
    }
    const size = vs.shownSize;
    if (size && (size.width !== session.width || size.height !== session.height)) {
      warnings.push(
        `the browser shows this clip at ${size.width}×${size.height}, the server reads it at ` +
          `${session.width}×${session.height}: the picture is stretched to the masks`,
      );
    }
    stage.setSize(session.width, session.height);
    if (!vs.objects.length) newObject();
    describe();
    if (vs.kind === "video") vs.shownFrame = -1; // seek to the frame's time, now known
    goTo(Math.min(vs.frame, session.frames - 1));
    if (warnings.length) showError(`Note: ${warnings.join("; ")}.`);
    showStatus(`Opened: click an object (left: foreground, right: background) or drag a box, on any frame.`);
    if (otherModel()) showStatus(modelNote());
  }

  // ---- the model -------------------------------------------------------------

  /** The served models: the picker lists those that track video, the default (or the one in use) picked. */
  function setModels(models) {
    vs.models = models;
    const keep = vs.modelId || (vs.session ? vs.session.modelId : "");
    const { chosen, current } = offerModels(ui.model, models, vs.modelId, {
      keep,
      usable: (m) => m.video,
      why: () => "no video",
    });
    vs.modelId = current;
    if (chosen !== vs.modelId) pickModel(chosen);
    else showModel();
  }

  function showModel() {
    ui.model.title = pickerTitle(
      vs.models,
      vs.modelId,
      "Each video session is one model's: another one applies to the next video opened (or re-opened).",
    );
    render();
  }

  function modelName(id) {
    return nameIn(vs.models, id, "the default model");
  }

  /** The session (or the upload in flight) is another model's than the one picked. */
  function otherModel() {
    if (!vs.models || !vs.modelId) return false;
    if (vs.session) return vs.session.modelId !== vs.modelId;
    return Boolean(vs.uploading) && vs.uploadingModel !== vs.modelId;
  }

  /** Work the session holds that re-opening it would lose: prompts (sent or on their way), masks, tracking. */
  function hasWork() {
    return Boolean(vs.tracking) || vs.results.size > 0 || vs.prompts.size > 0;
  }

  function modelNote() {
    return (
      `This clip's session stays on ${modelName(vs.session.modelId)}: its prompts and masks are that ` +
      `model's. “Re-open with ${modelName(vs.modelId)}” uploads the clip again for it (prompts start ` +
      "over; the masks here stay until then), and the next video opened goes to it."
    );
  }

  /**
   * Use model `id` for the next session. A clip still uploading, or open with
   * nothing prompted yet, is re-opened for it at once (nothing is lost); a
   * session with work keeps its model until "Re-open with …" is pressed.
   */
  function pickModel(id) {
    if (!takeModel(vs, ui.model, id)) return;
    showModel();
    if (!otherModel()) {
      if (vs.session) showStatus(`Back on ${modelName(id)}, this session's model.`);
      return;
    }
    if (vs.uploading || (live() && !hasWork())) {
      reopen();
      showStatus(`Re-opening the clip for ${modelName(id)}…`);
    } else if (vs.session) {
      showStatus(modelNote());
    }
  }

  /**
   * Upload the clip again for the picked model, as a new session: after it
   * expired (Upload again), or for another model (Re-open with …). The old
   * session, if the server still has it, is closed.
   */
  function reopen() {
    closeSession({ quiet: true });
    vs.uploading = null; // aborted: its own finally comes later, and must not hold up the new one
    upload();
  }

  function describe() {
    const s = vs.session;
    if (!s) return;
    const rate = s.fps ? ` · ${Number(s.fps.toFixed(3))} fps` : "";
    ui.info.textContent = `${vs.name} · ${s.frames} frames · ${s.width}×${s.height}${rate} · ${modelName(s.modelId)}`;
    ui.info.title = `${ui.info.textContent}\nvideo ${s.videoId}\nmodel ${s.modelId}`;
  }

  function clearSessionState() {
    stopPlayback();
    vs.session = null;
    vs.objects = [];
    vs.active = null;
    vs.nextId = 1;
    vs.prompts = new Map();
    vs.results = new Map();
    vs.queue = Promise.resolve();
    vs.pending = 0;
    vs.tracking = null;
    stage.setMask(null);
    stage.setPrompts([]);
  }

  /**
   * Close the session on the server and forget it: Close (`quiet` false: the
   * clip goes too), or a new clip or a new upload replacing it (the caller
   * sets the new one up). Either way a new epoch: whatever is in flight for
   * the old session (tracking, an upload, queued requests) is dropped.
   */
  async function closeSession({ quiet = false } = {}) {
    const session = live() ? vs.session : null;
    if (vs.tracking) vs.tracking.abort.abort();
    if (vs.uploading) vs.uploading.abort();
    vs.epoch++;
    clearSessionState();
    vs.expired = false;
    if (!quiet) {
      source.clear();
      Object.assign(vs, { kind: null, files: [], name: "", displayable: false, shownFrame: -1 });
      ui.stageRoot.classList.add("empty");
      ui.info.textContent = "";
      clearError();
      hideProgress();
    }
    render();
    if (!session) return;
    try {
      await videoApi.close(session.videoId);
      if (!quiet) showStatus("Closed: the server has freed the video.");
    } catch (error) {
      if (!quiet) showError(error); // the server's idle timeout frees it anyway
    }
  }

  // ---- objects and prompts ---------------------------------------------------

  function newObject() {
    const id = vs.nextId++;
    const rgb = objectColour(id);
    vs.objects.push({ id, rgb, css: `rgb(${rgb.join(" ")})`, prompted: false });
    vs.active = id;
    render();
    return id;
  }

  function selectObject(id) {
    if (!vs.objects.some((o) => o.id === id)) return;
    vs.active = id;
    render();
  }

  function key(objectId, frame) {
    return `${objectId}:${frame}`;
  }

  /** A click or a box on the frame shown: sent at once, for the active object. */
  function addPrompt(prompt) {
    if (!live()) {
      if (vs.expired) showError(explain(new ApiError(404, "")));
      if (vs.uploading) showStatus("The clip is still uploading: prompt once it is open.");
      return;
    }
    if (vs.tracking) {
      showError("Tracking is running: Stop it (Esc) or let it finish, then prompt.");
      return;
    }
    clearError();
    stopPlayback();
    if (vs.active === null) newObject();
    const objectId = vs.active;
    const frame = vs.frame;
    const at = key(objectId, frame);
    const record = vs.prompts.get(at) || { objectId, frame, points: [], box: null };
    vs.prompts.set(at, record);
    let undo;
    if (prompt.box) {
      const before = record.box;
      record.box = prompt.box;
      undo = () => {
        if (record.box === prompt.box) record.box = before;
      };
    } else {
      record.points.push(prompt);
      undo = () => {
        const index = record.points.indexOf(prompt);
        if (index >= 0) record.points.splice(index, 1);
      };
    }
    drawMarks();
    const epoch = vs.epoch;
    enqueue(async () => {
      if (!record.points.length && !record.box) return; // every prompt of it failed meanwhile
      const body = { frame_index: frame, object_id: objectId, mask_format: "rle" };
      if (record.box) body.box = record.box;
      if (record.points.length) {
        body.points = record.points.map((p) => p.point);
        body.labels = record.points.map((p) => p.label);
      }
      const answer = await whenFree(() => videoApi.prompt(vs.session.videoId, body));
      if (epoch !== vs.epoch) return;
      const object = vs.objects.find((o) => o.id === objectId);
      if (object) object.prompted = true;
      record.sent = true;
      storeFrame(answer);
      render();
      showStatus(`${statusOf(answer.objects.length)} on frame ${answer.frame_index + 1}`);
    }).catch((error) => {
      if (epoch !== vs.epoch) return;
      undo();
      if (!record.points.length && !record.box && !record.sent) vs.prompts.delete(at);
      drawMarks();
      failed(error);
    });
  }

  function statusOf(objects) {
    return `${objects} ${objects === 1 ? "object" : "objects"}`;
  }

  /** Keep a frame's masks: a prompt's answer, or one line of a propagation. */
  function storeFrame(answer) {
    const frame = answer && answer.frame_index;
    if (!Number.isInteger(frame) || !vs.session || frame < 0 || frame >= vs.session.frames) {
      throw new Error(`The server answered for frame ${frame}, not a frame of this clip.`);
    }
    if (!Array.isArray(answer.objects)) throw new Error("The server's answer has no objects.");
    const masks = new Map();
    for (const { object_id: id, mask } of answer.objects) {
      if (!vs.objects.some((o) => o.id === id)) continue; // removed here since
      masks.set(id, mask);
    }
    vs.results.set(frame, masks);
    if (frame === vs.shownFrame) drawMask();
    drawStrip();
  }

  async function removeObject(id = vs.active) {
    const object = vs.objects.find((o) => o.id === id);
    if (!object) return;
    if (vs.tracking) {
      showError("Tracking is running: Stop it (Esc) or let it finish, then remove the object.");
      return;
    }
    clearError();
    const epoch = vs.epoch;
    if (live()) {
      try {
        // Queued after its prompts still in flight: whether the server has it is known then.
        await enqueue(async () => {
          if (object.prompted) await whenFree(() => videoApi.removeObject(vs.session.videoId, id));
        });
      } catch (error) {
        if (epoch !== vs.epoch) return;
        if (!(error instanceof ApiError && error.status === 404 && (await sessionAlive()))) {
          failed(error);
          return;
        }
        // The server never had it: remove it here only.
      }
      if (epoch !== vs.epoch || !vs.objects.includes(object)) return;
    }
    const at = vs.objects.indexOf(object);
    vs.objects.splice(at, 1);
    for (const [k, record] of vs.prompts) if (record.objectId === id) vs.prompts.delete(k);
    for (const masks of vs.results.values()) masks.delete(id);
    for (const [frame, masks] of vs.results) if (!masks.size) vs.results.delete(frame);
    if (vs.active === id) {
      const next = vs.objects[Math.min(at, vs.objects.length - 1)];
      vs.active = next ? next.id : null;
    }
    render();
    drawMask();
    showStatus(`Removed object ${id}.`);
  }

  async function sessionAlive() {
    try {
      await videoApi.get(vs.session.videoId);
      return true;
    } catch {
      return false;
    }
  }

  async function reset() {
    if (!live()) return;
    if (vs.tracking) {
      showError("Tracking is running: Stop it (Esc) first, then reset.");
      return;
    }
    clearError();
    stopPlayback();
    const epoch = vs.epoch;
    try {
      await enqueue(() => whenFree(() => videoApi.reset(vs.session.videoId)));
    } catch (error) {
      if (epoch === vs.epoch) failed(error);
      return;
    }
    if (epoch !== vs.epoch) return;
    vs.objects = [];
    vs.active = null;
    vs.nextId = 1;
    vs.prompts = new Map();
    vs.results = new Map();
    newObject();
    drawMask();
    showStatus("Reset: every prompt and mask is cleared; the frames stay on the server.");
  }

  // ---- requests on the session, one at a time ----------------------------

  /** Run `call` after every request queued before it (the session takes one at a time). */
  function enqueue(call) {
    vs.pending++;
    render();
    const epoch = vs.epoch;
    const run = vs.queue.then(() => {
      if (epoch !== vs.epoch || !live()) throw new Superseded();
      return call();
    });
    const settle = () => {
      if (epoch !== vs.epoch) return;
      vs.pending--;
      render();
    };
    vs.queue = run.then(settle, settle);
    return run;
  }

  /**
   * `call()`, waiting out the 409 of a session still finishing the frame a
   * stopped propagation was computing (up to BUSY_WAIT_MS after Stop). Any
   * other 409 (someone else is using the session) is the caller's to show.
   */
  async function whenFree(call) {
    let wait = 50;
    for (;;) {
      try {
        return await call();
      } catch (error) {
        const busy = error instanceof ApiError && error.status === 409;
        if (!busy || performance.now() - vs.stoppedAt > BUSY_WAIT_MS) throw error;
        await sleep(Math.min(wait, (error.retryAfter || 1) * 1000));
        wait = Math.min(wait * 2, 1000);
      }
    }
  }

  // ---- tracking --------------------------------------------------------------

  async function track(reverse) {
    if (!live() || vs.tracking) return;
    const prompted = [...vs.prompts.values()].filter((r) => r.sent).map((r) => r.frame);
    if (!prompted.length) {
      showError("Nothing to track yet: click an object (or drag a box around it) on any frame first.");
      return;
    }
    clearError();
    stopPlayback();
    // The library starts at the first prompted frame, either way.
    const start = Math.min(...prompted);
    const total = reverse ? (start === 0 ? 0 : start + 1) : vs.session.frames - start;
    if (total === 0) {
      showStatus("Nothing to track backwards: the first prompted frame is the clip's first frame.");
      return;
    }
    const abort = new AbortController();
    const tracking = { reverse, done: 0, total, abort, follow: true, started: performance.now() };
    vs.tracking = tracking;
    const epoch = vs.epoch;
    const direction = reverse ? "backwards" : "forwards";
    setProgress(0, total, `Tracking ${direction}: 0 / ${total} frames`);
    render();
    try {
      await enqueue(() =>
        whenFree(() =>
          videoApi.propagate(
            vs.session.videoId,
            { reverse, mask_format: "rle" },
            (line) => {
              if (epoch !== vs.epoch || abort.signal.aborted) return;
              if (tracking.done + 1 === total) mark("sam2:last-frame", { frame: line.frame_index });
              storeFrame(line);
              tracking.done++;
              setProgress(tracking.done, total, `Tracking ${direction}: ${tracking.done} / ${total} frames`);
              if (tracking.follow) goTo(line.frame_index);
            },
            abort.signal,
          ),
        ),
      );
      if (epoch !== vs.epoch) return;
      const seconds = ((performance.now() - tracking.started) / 1000).toFixed(1);
      showStatus(`Tracked ${tracking.done} frames ${direction} in ${seconds} s: Play (Space) shows them.`);
    } catch (error) {
      if (epoch !== vs.epoch || error instanceof Superseded) return;
      if (abort.signal.aborted) {
        showStatus(`Stopped after ${tracking.done} of ${total} frames; the frames tracked so far are kept.`);
      } else {
        failed(error);
      }
    } finally {
      if (vs.tracking === tracking) {
        vs.tracking = null;
        hideProgress();
        render();
        mark("sam2:track-end", { frames: tracking.done }); // Track and Play are ready again
      }
    }
  }

  function stopTracking() {
    if (!vs.tracking) return false;
    vs.stoppedAt = performance.now();
    vs.tracking.abort.abort();
    return true;
  }

  // ---- frames and playback ---------------------------------------------------

  let displaying = null;

  /** Show frame `index` (clamped); resolves once its picture and masks are up. */
  function goTo(index, { user = false } = {}) {
    const frames = frameCount();
    if (!frames) return Promise.resolve();
    if (user) {
      stopPlayback();
      if (vs.tracking) vs.tracking.follow = false;
    }
    vs.frame = Math.max(0, Math.min(frames - 1, Math.round(index)));
    drawMarks();
    drawTimeline();
    // `.finally` runs after the assignment, even when nothing had to be awaited.
    if (!displaying) displaying = display().finally(() => (displaying = null));
    return displaying;
  }

  /** Bring the picture and masks on screen to `vs.frame`, however often it moves meanwhile. */
  async function display() {
    while (vs.shownFrame !== vs.frame) {
      const wanted = vs.frame;
      if (vs.displayable) {
        try {
          await source.show(wanted);
        } catch (error) {
          showError(`Could not show frame ${wanted + 1}: ${error.message}`);
        }
      }
      if (wanted !== vs.frame) continue; // moved on meanwhile
      vs.shownFrame = wanted;
      drawMask();
      ui.stageRoot.dataset.shown = String(wanted); // the frame whose picture and masks are up
      const objects = vs.results.has(wanted) ? vs.results.get(wanted).size : 0;
      mark(vs.playing ? "sam2:playback-frame" : "sam2:frame-drawn", { frame: wanted, objects });
    }
  }

  function frameCount() {
    if (vs.session) return vs.session.frames;
    return vs.kind === "frames" ? vs.files.length : 0;
  }

  async function play() {
    if (vs.playing) {
      stopPlayback();
      return;
    }
    const frames = frameCount();
    if (!vs.session || frames < 2) return;
    const playing = {};
    vs.playing = playing;
    mark("sam2:play", { from: vs.frame >= frames - 1 ? 0 : vs.frame });
    if (vs.tracking) vs.tracking.follow = false;
    render();
    const interval = 1000 / vs.playbackFps;
    let frame = vs.frame >= frames - 1 ? 0 : vs.frame;
    let due = performance.now();
    while (vs.playing === playing) {
      await goTo(frame);
      if (vs.playing !== playing || frame >= frames - 1) break;
      due += interval;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      else due = performance.now(); // slower than the clip: no catching up in a burst
      frame++;
    }
    if (vs.playing === playing) {
      vs.playing = null;
      render();
    }
  }

  function stopPlayback() {
    if (!vs.playing) return false;
    vs.playing = null;
    render();
    return true;
  }

  // ---- export ---------------------------------------------------------------

  /** [[frame, [[objectId, rle], ...]], ...] in frame order, objects by id. */
  function storedMasks() {
    return [...vs.results.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([frame, masks]) => [frame, [...masks.entries()].sort((a, b) => a[0] - b[0])])
      .filter(([, objects]) => objects.length);
  }

  /** The exports' name: the video file's, or the first and last frame files'. */
  function baseName() {
    const stem = (file) => (file.name || "").replace(/\.[^.]*$/, "");
    const files = vs.files;
    let name = vs.kind === "frames" && files.length > 1 ? `${stem(files[0])}-${stem(files[files.length - 1])}` : "";
    if (!name && files.length) name = stem(files[0]);
    return name.replace(/[\\/:*?"<>|\x00-\x1f]+/g, "_") || "video";
  }

  async function exportZip() {
    const masks = storedMasks();
    if (!masks.length) {
      showError("Nothing to export yet: prompt an object, then track it.");
      return;
    }
    clearError();
    vs.exporting = true;
    render();
    try {
      const total = masks.reduce((sum, [, objects]) => sum + objects.length, 0);
      const entries = [];
      for (const [frame, objects] of masks) {
        for (const [objectId, rle] of objects) {
          const { pixels, width, height } = decodeMask(rle);
          entries.push({ name: maskPath(objectId, frame), data: await encodePngGray(pixels, width, height) });
          if (entries.length % 16 === 0) showStatus(`Exporting ${entries.length} / ${total} masks…`);
        }
      }
      download(zipStore(entries), `${baseName()}-masks.zip`, 30000);
      showStatus(`Exported ${total} masks (${masks.length} frames) as PNG files in a ZIP.`);
    } catch (error) {
      showError(`Could not export the masks: ${error.message}`);
    } finally {
      vs.exporting = false;
      render();
    }
  }

  function exportJson() {
    const masks = storedMasks();
    if (!masks.length) {
      showError("Nothing to export yet: prompt an object, then track it.");
      return;
    }
    clearError();
    try {
      const s = vs.session || {};
      const video = {
        videoId: s.videoId || null,
        modelId: s.modelId || null,
        name: vs.name,
        width: s.width,
        height: s.height,
        frames: s.frames,
        fps: s.fps ?? null,
        frameNames: vs.kind === "frames" ? vs.files.map((f) => f.name) : null,
      };
      const ids = [...new Set(masks.flatMap(([, objects]) => objects.map(([id]) => id)))].sort((a, b) => a - b);
      const json = JSON.stringify(cocoJson(video, masks, ids));
      download(new Blob([json], { type: "application/json" }), `${baseName()}-coco.json`, 30000);
      showStatus(`Exported ${masks.length} frames' masks as COCO JSON (RLE).`);
    } catch (error) {
      showError(`Could not export the masks: ${error.message}`);
    }
  }

  // ---- drawing ---------------------------------------------------------------

  function render() {
    renderObjects();
    updateControls();
    drawMarks();
    drawTimeline();
  }

  function updateControls() {
    const ready = live();
    const tracking = Boolean(vs.tracking);
    const hasMasks = vs.results.size > 0;
    const prompted = [...vs.prompts.values()].some((r) => r.sent);
    ui.newObject.disabled = !ready;
    ui.remove.disabled = !ready || tracking || vs.active === null;
    ui.track.disabled = !ready || tracking || !prompted;
    ui.trackBack.disabled = !ready || tracking || !prompted;
    ui.stop.disabled = !tracking;
    ui.play.disabled = !vs.session || frameCount() < 2;
    ui.play.textContent = vs.playing ? "Pause" : "Play";
    ui.play.setAttribute("aria-pressed", String(Boolean(vs.playing)));
    ui.reset.disabled = !ready || tracking;
    ui.close.disabled = !vs.session && !vs.files.length;
    const other = otherModel() && Boolean(vs.session);
    ui.reopen.hidden = !vs.expired && !other;
    ui.reopen.textContent = other ? `Re-open with ${modelName(vs.modelId)}` : "Upload again";
    ui.reopen.title = other
      ? `Upload this clip again as a new session on ${vs.modelId} (prompts start over; this session is closed)`
      : "The server forgot this clip: upload it again (prompts start over)";
    ui.exportZip.disabled = !hasMasks || vs.exporting;
    ui.exportJson.disabled = !hasMasks;
    ui.prev.disabled = frameCount() < 2;
    ui.next.disabled = frameCount() < 2;
    ui.stageRoot.classList.toggle("busy", vs.pending > 0 || Boolean(vs.uploading));
    ui.fg.setAttribute("aria-pressed", String(!vs.background));
    ui.bg.setAttribute("aria-pressed", String(vs.background));
  }

  function renderObjects() {
    ui.objects.replaceChildren();
    vs.objects.forEach((object, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.object = String(object.id);
      button.setAttribute("aria-pressed", String(object.id === vs.active));
      button.title = `Object ${object.id}: new prompts go to it${index < 9 ? ` (${index + 1})` : ""}`;
      button.setAttribute("aria-label", `Object ${object.id}`);
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.style.background = object.css;
      button.append(dot, String(object.id));
      button.addEventListener("click", () => selectObject(object.id));
      ui.objects.append(button);
    });
  }

  function drawMarks() {
    const marks = [];
    for (const object of vs.objects) {
      const record = vs.prompts.get(key(object.id, vs.frame));
      if (!record) continue;
      if (record.box) marks.push({ box: record.box, colour: object.css });
      for (const p of record.points) marks.push({ ...p, colour: object.css });
    }
    stage.setPrompts(marks);
  }

  /** The masks of the frame on screen, each object in its colour (later objects on top). */
  function drawMask() {
    const frame = vs.shownFrame;
    const masks = vs.results.get(frame);
    if (!vs.session || !masks || !masks.size) {
      stage.setMask(null);
      return;
    }
    const { width, height } = vs.session;
    const owner = new Int32Array(width * height).fill(-1);
    try {
      vs.objects.forEach((object, index) => {
        const rle = masks.get(object.id);
        if (rle) paintRle(rle, width, height, owner, index);
      });
    } catch (error) {
      showError(`Could not draw the masks of frame ${frame + 1}: ${error.message}`);
      return;
    }
    const { overlay } = ownerOverlay(owner, vs.objects.map((o) => o.rgb), width, height);
    stage.setMask(overlay);
  }

  function drawTimeline() {
    const frames = frameCount();
    const label = frames ? `Frame ${vs.frame + 1} / ${frames}` : "Frame – / –";
    if (ui.frameLabel.textContent !== label) ui.frameLabel.textContent = label;
    ui.strip.setAttribute("aria-valuemax", String(Math.max(frames - 1, 0)));
    ui.strip.setAttribute("aria-valuenow", String(vs.frame));
    ui.strip.setAttribute("aria-valuetext", frames ? `frame ${vs.frame + 1} of ${frames}` : "no clip");
    drawStrip();
  }

  let stripQueued = false;
  function drawStrip() {
    if (stripQueued) return;
    stripQueued = true;
    requestAnimationFrame(() => {
      stripQueued = false;
      paintStrip();
    });
  }

  /** One cell per frame: filled where masks are stored, a tick where prompted, the current one outlined. */
  function paintStrip() {
    const canvas = ui.strip;
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, width, height);
    const frames = frameCount();
    if (!frames) return;
    const cell = width / frames;
    const gap = cell > 4 * dpr ? dpr : 0;
    const prompted = new Map();
    for (const record of vs.prompts.values()) {
      const object = vs.objects.find((o) => o.id === record.objectId);
      if (object && (record.points.length || record.box)) prompted.set(record.frame, object.css);
    }
    for (let i = 0; i < frames; i++) {
      const x0 = Math.floor(i * cell);
      const x1 = Math.max(x0 + 1, Math.floor((i + 1) * cell) - gap);
      context.fillStyle = vs.results.has(i) ? "#7d8799" : "#2a303b";
      context.fillRect(x0, 0, x1 - x0, height);
      if (prompted.has(i)) {
        context.fillStyle = prompted.get(i);
        context.fillRect(x0, 0, x1 - x0, Math.ceil(height / 3));
      }
    }
    const x0 = Math.floor(vs.frame * cell);
    const x1 = Math.max(x0 + 2 * dpr, Math.floor((vs.frame + 1) * cell) - gap);
    context.lineWidth = 2 * dpr;
    context.strokeStyle = "#ffffff";
    context.strokeRect(x0 + dpr, dpr, x1 - x0 - 2 * dpr, height - 2 * dpr);
  }

  function setProgress(value, max, label) {
    ui.progress.hidden = false;
    ui.progress.max = Math.max(max, 1);
    ui.progress.value = Math.min(value, max);
    ui.progressLabel.textContent = label;
  }

  function hideProgress() {
    ui.progress.hidden = true;
    ui.progressLabel.textContent = "";
  }

  // ---- status and errors -------------------------------------------------

  function showStatus(text) {
    ui.status.textContent = text;
  }

  /** The last request's cost: what, status, bytes each way, time. */
  function showRequest(done) {
    ui.request.textContent = reportLine(done, { seconds: true });
  }

  /** An error in plain words, with what to do; a 404 means the session is gone. */
  function failed(error) {
    if (error instanceof Superseded) return;
    if (error instanceof ApiError && error.status === 404 && live()) {
      vs.expired = true;
      render();
    }
    showError(error);
  }

  function showError(error) {
    if (error instanceof Superseded) return;
    ui.error.textContent = typeof error === "string" ? error : explain(error);
  }

  function clearError() {
    ui.error.textContent = "";
  }

  // ---- controls ----------------------------------------------------------

  function setBackground(on) {
    vs.background = on;
    updateControls();
  }

  function wire() {
    ui.file.addEventListener("change", () => {
      open(ui.file.files);
      ui.file.value = ""; // choosing the same files again still opens them
    });
    ui.fg.addEventListener("click", () => setBackground(false));
    ui.bg.addEventListener("click", () => setBackground(true));
    ui.newObject.addEventListener("click", () => live() && newObject());
    ui.remove.addEventListener("click", () => removeObject());
    ui.track.addEventListener("click", () => track(false));
    ui.trackBack.addEventListener("click", () => track(true));
    ui.stop.addEventListener("click", stopTracking);
    ui.play.addEventListener("click", play);
    ui.reset.addEventListener("click", reset);
    ui.close.addEventListener("click", () => closeSession());
    ui.reopen.addEventListener("click", reopen);
    ui.model.addEventListener("change", () => pickModel(ui.model.value));
    ui.exportZip.addEventListener("click", exportZip);
    ui.exportJson.addEventListener("click", exportJson);
    ui.prev.addEventListener("click", () => goTo(vs.frame - 1, { user: true }));
    ui.next.addEventListener("click", () => goTo(vs.frame + 1, { user: true }));
    ui.token.addEventListener("change", () => {
      // A refused upload (401) is tried again as soon as a token is given.
      if (vs.files.length && !vs.session && !vs.uploading && vs.refused) upload();
    });

    const strip = ui.strip;
    const seek = (event) => {
      const rect = strip.getBoundingClientRect();
      const frames = frameCount();
      if (!frames || rect.width <= 0) return;
      goTo(Math.floor(((event.clientX - rect.left) / rect.width) * frames), { user: true });
    };
    strip.addEventListener("pointerdown", (event) => {
      strip.setPointerCapture(event.pointerId);
      seek(event);
    });
    strip.addEventListener("pointermove", (event) => {
      if (strip.hasPointerCapture(event.pointerId)) seek(event);
    });
    new ResizeObserver(drawStrip).observe(strip);

    // Leaving the page closes the session: a keepalive request outlives the page.
    window.addEventListener("pagehide", () => {
      if (live()) videoApi.closeOnExit(vs.session.videoId);
    });
  }

  /** Video mode's keys; true when the key was one (the caller then prevents its default). */
  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return false;
    const k = event.key;
    if (k === "ArrowRight") goTo(vs.frame + (event.shiftKey ? BIG_STEP : 1), { user: true });
    else if (k === "ArrowLeft") goTo(vs.frame - (event.shiftKey ? BIG_STEP : 1), { user: true });
    else if (k === "Home") goTo(0, { user: true });
    else if (k === "End") goTo(frameCount() - 1, { user: true });
    else if (k === " ") play();
    else if (k === "Escape") stopTracking() || stopPlayback();
    else if (k === "f") setBackground(false);
    else if (k === "b") setBackground(true);
    else if (k === "n") live() && newObject();
    else if (k === "t") track(false);
    else if (k === "T") track(true);
    else if (k === "Delete") removeObject();
    else if (/^[1-9]$/.test(k) && vs.objects[Number(k) - 1]) selectObject(vs.objects[Number(k) - 1].id);
    else return false;
    return true;
  }

  wire();
  render();
  hideProgress();

  return {
    open,
    onKey,
    setModels,
    /** Leaving video mode pauses playback (tracking goes on). */
    deactivate: stopPlayback,
    activate: () => {
      drawStrip();
    },
  };
}

/** An answer for a clip the user has since replaced or closed: nobody wants it. */
class Superseded extends Error {}

/**
 * A User Timing mark, only the latest of each name kept (no growing timeline):
 * `sam2:last-frame` (the last line of a propagation handled), `sam2:track-end`
 * (the stream over, Track and Play ready), `sam2:play` (Play pressed),
 * `sam2:playback-frame` / `sam2:frame-drawn` (a frame's picture and masks put
 * on screen, playing or not). bench/playback_latency.py reads them; so can the
 * browser's performance panel.
 */
function mark(name, detail) {
  performance.clearMarks(name);
  performance.mark(name, { detail });
}

export function isVideoFile(file) {
  if (file.type) return file.type.startsWith("video/");
  return /\.(mp4|m4v|mov|webm|mkv|avi|ogv|mpe?g|3gp)$/i.test(file.name || "");
}

/** Object `id`'s colour: the palette's, then golden-angle hues. */
function objectColour(id) {
  return id >= 1 && id <= OBJECT_COLOURS.length ? OBJECT_COLOURS[id - 1] : maskColour(id);
}

function framesName(files) {
  if (files.length === 1) return files[0].name;
  return `${files[0].name} – ${files[files.length - 1].name}`;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The error in plain words, with what to do about it. */
function explain(error) {
  if (!(error instanceof ApiError)) return error.message || String(error);
  const { status, message } = error;
  switch (status) {
    case 0:
      return `${message} Check that the server is running and reachable, then try again.`;
    case 401:
      return `${message} (401: put the server's token in the Token field).`;
    case 404:
      return (
        "The server no longer has this video: it was closed, it expired after being left idle, or " +
        "the server restarted. Press “Upload again” to open it anew (prompts start over); the masks " +
        "tracked so far stay here, and can still be exported. (404)"
      );
    case 409:
      return (
        "The server is busy with this video: another request on it is still running (tracking, " +
        "perhaps from another tab). Wait for it to end, or stop it, then try again. (409)"
      );
    case 413:
      return `${message} (413: the clip is too large for this server: use a shorter clip, fewer frames or smaller ones.)`;
    case 503: {
      const wait = error.retryAfter ? ` in ${error.retryAfter} s` : " in a while";
      return `${message} (503: the server is at its limit: close a video you no longer need, or try again${wait}.)`;
    }
    default:
      return `${message} (${status})`;
  }
}
