// The native API as the page uses it: upload an image once, then prompt it (or
// ask for every mask at once, its progress streamed). Every call reports what it
// cost (bytes each way, milliseconds), to the report callback and on its answer
// (`answer[REPORT]`; `reportLine` puts one in the pages' words), and turns an
// error answer into the server's own message (`detail.msg`). A call aborted by
// its caller's signal rejects with the browser's AbortError, unreported.
// `stream` reads an NDJSON answer line by line (automatic masks' progress here,
// a video propagation in videoapi.js).

/** The key of an answer's own report: `answer[REPORT]`, {what, status, sent, received, ms}. */
export const REPORT = Symbol("report");

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class Api {
  /**
   * @param {() => string} getToken the bearer token, "" for none
   * @param {(report: {what, status, sent, received, ms}) => void} onReport
   */
  constructor(getToken, onReport) {
    this.getToken = getToken;
    this.onReport = onReport;
  }

  /** POST v1/images: the image's id, size and model; the server encodes it now. */
  upload(file, modelId) {
    const form = new FormData();
    form.append("image", file, file.name || "image");
    if (modelId) form.append("model_id", modelId);
    return this.call("upload", "POST", "v1/images", form, file.size);
  }

  /** POST v1/images/{id}/segment with a JSON prompt. */
  segment(imageId, prompt) {
    const text = JSON.stringify(prompt);
    const path = `v1/images/${encodeURIComponent(imageId)}/segment`;
    return this.call("segment", "POST", path, text, text.length, "application/json");
  }

  /**
   * POST v1/images/{id}/automatic-masks: every mask SAM2's grid of points finds,
   * streamed as NDJSON: `onProgress(done, total)` after each batch of points, then
   * the answer. Aborting `signal` closes the connection, and the server stops computing.
   */
  async automaticMasks(imageId, params, signal, onProgress) {
    const text = JSON.stringify(params);
    const path = `v1/images/${encodeURIComponent(imageId)}/automatic-masks`;
    let answer = null;
    const onLine = (line) => {
      if (line.progress) onProgress(line.progress.done, line.progress.total);
      else if (line.result && typeof line.result === "object") answer = line.result;
    };
    const report = await this.stream("automatic-masks", "POST", path, text, signal, onLine, "Segment everything");
    if (!answer) throw new ApiError(report.status, "The server's answer ended before its result.");
    answer[REPORT] = report;
    return answer;
  }

  /**
   * A JSON request whose answer is NDJSON, read line by line as it arrives:
   * `onLine(data)` for each line. Resolves with its report once the stream ends.
   * An error answer rejects as `call`'s do (with the Retry-After in seconds as
   * `retryAfter`); so does an `{"error": {"status", "msg"}}` line, with its status.
   * `during` names the work in the message of a connection that breaks.
   */
  async stream(what, method, path, text, signal, onLine, during = what) {
    const started = performance.now();
    const headers = { ...this.headers("application/json"), Accept: "application/x-ndjson" };
    let response;
    try {
      response = await fetch(path, { method, headers, body: text, cache: "no-store", signal });
    } catch (error) {
      if (signal && signal.aborted) throw error;
      this.onReport({ what, status: 0, sent: text.length, received: 0, ms: performance.now() - started });
      throw new ApiError(0, `Could not reach the server (${error.message}).`);
    }
    let received = 0;
    const report = (status) => {
      const done = { what, status, sent: text.length, received, ms: performance.now() - started };
      this.onReport(done);
      return done;
    };
    if (!response.ok) {
      const answer = await response.text();
      received = answer.length;
      report(response.status);
      const error = new ApiError(response.status, errorMessage(response, parse(answer), answer));
      throw withRetry(error, response.headers.get("Retry-After"));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    const handle = (line) => {
      if (!line.trim()) return;
      const data = parse(line);
      if (!data || typeof data !== "object") throw new ApiError(response.status, "The server sent a line that is not JSON.");
      if (data.error) {
        const status = Number(data.error.status) || 500;
        throw new ApiError(status, String(data.error.msg || `${during} failed.`));
      }
      onLine(data);
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        received += value.byteLength;
        pending += decoder.decode(value, { stream: true });
        let end;
        while ((end = pending.indexOf("\n")) >= 0) {
          const line = pending.slice(0, end);
          pending = pending.slice(end + 1);
          handle(line);
        }
      }
      pending += decoder.decode();
      handle(pending);
    } catch (error) {
      reader.cancel().catch(() => {});
      if (signal && signal.aborted) throw error;
      report(error instanceof ApiError ? error.status : 0);
      if (error instanceof ApiError) throw error;
      throw new ApiError(0, `The connection broke during ${during} (${error.message}).`);
    }
    return report(response.status);
  }

  /** The bearer token and, for a body, its type. */
  headers(contentType) {
    const headers = {};
    const token = this.getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (contentType) headers["Content-Type"] = contentType;
    return headers;
  }

  async call(what, method, path, body, sent, contentType, signal) {
    const headers = this.headers(contentType);
    const started = performance.now();
    let response;
    let bytes;
    try {
      // Relative: the page also works behind a proxy that mounts it on a sub-path.
      response = await fetch(path, { method, headers, body, cache: "no-store", signal });
      bytes = new Uint8Array(await response.arrayBuffer());
    } catch (error) {
      if (signal && signal.aborted) throw error; // the caller gave up: nothing to report
      this.onReport({ what, status: 0, sent, received: 0, ms: performance.now() - started });
      throw new ApiError(0, `Could not reach the server (${error.message}).`);
    }
    const ms = performance.now() - started;
    const report = { what, status: response.status, sent, received: bytes.byteLength, ms };
    this.onReport(report);
    const text = new TextDecoder().decode(bytes);
    const data = parse(text); // null when not JSON: only an error answer can be (a proxy's page)
    if (!response.ok) {
      throw new ApiError(response.status, errorMessage(response, data, text));
    }
    if (data === null || typeof data !== "object") {
      throw new ApiError(response.status, "The server's answer is not a JSON object.");
    }
    data[REPORT] = report;
    return data;
  }
}

/** JSON text's value, or null when it is not JSON. */
export function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * A report ({what, status, sent, received, ms}) as the pages' request line.
 * `seconds`: a time of 10 s or more reads in seconds (video mode's long uploads
 * and propagations), not milliseconds.
 */
export function reportLine({ what, status, sent, received, ms }, { seconds = false } = {}) {
  const time = seconds && ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
  return `${what} ${status || "no answer"} · ↑ ${formatBytes(sent)} ↓ ${formatBytes(received)} · ${time}`;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(2)} MB`;
}

/** `error` with the answer's Retry-After, in seconds, as `error.retryAfter`. */
export function withRetry(error, retryAfter) {
  const seconds = Number(retryAfter);
  if (Number.isFinite(seconds) && seconds >= 0) error.retryAfter = seconds;
  return error;
}

/** The server's `detail.msg`; FastAPI's 422 list; or the status line as a last resort. */
export function errorMessage(response, data, text) {
  const detail = data && data.detail;
  if (detail && typeof detail.msg === "string") return detail.msg;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((e) => (e.loc ? `${e.loc.join(".")}: ${e.msg}` : e.msg))
      .join("; ");
  }
  const snippet = text ? `: ${text.slice(0, 200)}` : "";
  return `HTTP ${response.status} ${response.statusText}${snippet}`;
}
