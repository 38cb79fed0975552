// The native API's video sessions as the page uses them (docs/video.md): one
// upload (with progress), prompts, a propagation read line by line as it
// streams, object removal, reset, close. Errors become ApiErrors carrying the
// server's own message, status and Retry-After; `Api.call` (api.js) does the
// JSON calls, so each reports its bytes and time like the image page's.

import { ApiError, errorMessage, parse, withRetry } from "./api.js";

export class VideoApi {
  /** @param {import("./api.js").Api} api the token and the report callback; JSON calls go through it */
  constructor(api) {
    this.api = api;
  }

  /**
   * POST v1/videos: one video file, or frame images in order. An XMLHttpRequest,
   * for its upload progress (`onProgress(sent, total)`); `signal` aborts it.
   */
  open({ video, frames }, modelId, onProgress, signal) {
    const form = new FormData();
    if (video) form.append("video", video, video.name || "video");
    for (const frame of frames || []) form.append("frames", frame, frame.name || "frame");
    if (modelId) form.append("model_id", modelId);
    const size = (video ? video.size : 0) + (frames || []).reduce((sum, f) => sum + f.size, 0);
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      const started = performance.now();
      xhr.open("POST", "v1/videos");
      for (const [name, value] of Object.entries(this.api.headers())) xhr.setRequestHeader(name, value);
      xhr.responseType = "text";
      xhr.upload.addEventListener("progress", (event) => {
        if (onProgress) onProgress(event.loaded, event.lengthComputable ? event.total : size);
      });
      const report = (status, received) =>
        this.api.onReport({ what: "upload", status, sent: size, received, ms: performance.now() - started });
      xhr.addEventListener("load", () => {
        const text = xhr.responseText || "";
        report(xhr.status, text.length);
        const data = parse(text); // null when not JSON: handled below
        if (xhr.status < 200 || xhr.status >= 300) {
          const response = { status: xhr.status, statusText: xhr.statusText };
          reject(withRetry(new ApiError(xhr.status, errorMessage(response, data, text)), xhr.getResponseHeader("Retry-After")));
        } else if (!data || typeof data.video_id !== "string") {
          reject(new ApiError(xhr.status, "The server's answer to the upload is not a video session."));
        } else {
          resolve(data);
        }
      });
      xhr.addEventListener("error", () => {
        report(0, 0);
        reject(new ApiError(0, "Could not reach the server (the upload failed)."));
      });
      xhr.addEventListener("abort", () => reject(new DOMException("The upload was cancelled.", "AbortError")));
      if (signal) signal.addEventListener("abort", () => xhr.abort(), { once: true });
      xhr.send(form);
    });
  }

  /** POST .../prompts: every object's mask on that frame. */
  prompt(videoId, body) {
    const text = JSON.stringify(body);
    return this.call("prompt", "POST", `${path(videoId)}/prompts`, text);
  }

  /** DELETE .../objects/{id}: the session's description without it. */
  removeObject(videoId, objectId) {
    return this.call("remove", "DELETE", `${path(videoId)}/objects/${objectId}`);
  }

  /** POST .../reset: prompts and results cleared, frames kept. */
  reset(videoId) {
    return this.call("reset", "POST", `${path(videoId)}/reset`);
  }

  /** DELETE the session (204: no JSON); a 404 (already gone) is success too. */
  async close(videoId) {
    let response;
    try {
      response = await fetch(path(videoId), { method: "DELETE", headers: this.api.headers(), cache: "no-store" });
    } catch (error) {
      throw new ApiError(0, `Could not reach the server (${error.message}).`);
    }
    if (response.ok || response.status === 404) return;
    const text = await response.text();
    throw new ApiError(response.status, errorMessage(response, parse(text), text));
  }

  /** Close the session as the page goes away: a keepalive request outlives the page. */
  closeOnExit(videoId) {
    try {
      fetch(path(videoId), { method: "DELETE", headers: this.api.headers(), keepalive: true, cache: "no-store" }).catch(
        () => {},
      );
    } catch {
      // leaving anyway: the server's idle timeout frees it
    }
  }

  /**
   * POST .../propagate, NDJSON: `onFrame(line)` for each frame's line as it
   * arrives. Resolves with the count of frames once the stream ends; an
   * `{"error"}` line rejects with its ApiError. Aborting `signal` closes the
   * connection (the server stops at the frame in progress) and rejects with
   * the AbortError.
   */
  async propagate(videoId, body, onFrame, signal) {
    let frames = 0;
    const onLine = (line) => {
      frames++;
      onFrame(line);
    };
    const url = `${path(videoId)}/propagate`;
    await this.api.stream("propagate", "POST", url, JSON.stringify(body), signal, onLine, "tracking");
    return frames;
  }

  /** A JSON call through the page's Api: its token, its report, the server's error message. */
  call(what, method, url, text) {
    return this.api.call(what, method, url, text, text ? text.length : 0, text ? "application/json" : undefined);
  }

  /** GET the session: its description and objects (404 once it is gone). */
  get(videoId) {
    return this.call("session", "GET", path(videoId));
  }
}

function path(videoId) {
  return `v1/videos/${encodeURIComponent(videoId)}`;
}
