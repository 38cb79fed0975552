// The native API as the page uses it: upload an image once, then prompt it (or
// ask for every mask at once). Every call reports what it cost (bytes each way,
// milliseconds), to the report callback and on its answer (`answer[REPORT]`), and
// turns an error answer into the server's own message (`detail.msg`). A call
// aborted by its caller's signal rejects with the browser's AbortError, unreported.

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
   * POST v1/images/{id}/automatic-masks: every mask SAM2's grid of points finds.
   * Aborting `signal` closes the connection, and the server stops computing.
   */
  automaticMasks(imageId, params, signal) {
    const text = JSON.stringify(params);
    const path = `v1/images/${encodeURIComponent(imageId)}/automatic-masks`;
    return this.call("automatic-masks", "POST", path, text, text.length, "application/json", signal);
  }

  async call(what, method, path, body, sent, contentType, signal) {
    const headers = {};
    const token = this.getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (contentType) headers["Content-Type"] = contentType;
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
    let data = null;
    try {
      data = JSON.parse(text);
    } catch {
      // not JSON: only an error answer can be (a proxy's page); handled below
    }
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
