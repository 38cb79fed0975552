// The video page's pictures. The server never sends frames back, so the
// browser decodes them itself: frame images are shown as they are (an <img>,
// without EXIF rotation, as the server reads them); a video file plays in a
// <video> element seeked to the middle of frame i's display interval,
// (i + 0.5) / fps, which is frame i of a constant-frame-rate clip whose first
// frame starts at 0 (what the server's PyAV decoder counts). A variable frame
// rate breaks that correspondence: docs/page.md says so.

const SEEK_TIMEOUT_MS = 5000;
const PAINT_TIMEOUT_MS = 200;

export class FrameSource {
  /** @param {HTMLImageElement} img @param {HTMLVideoElement} video */
  constructor(img, video) {
    this.img = img;
    this.video = video;
    this.kind = null; // "frames" | "video"
    this.files = [];
    this.urls = [];
    this.fps = 0;
    this.frames = 0;
  }

  /**
   * Load a clip for display: {kind: "frames", files} or {kind: "video", files: [file]}.
   * Resolves with the size the browser shows it at ({width, height}), or
   * rejects when the browser cannot decode it (the server may still).
   */
  async load(kind, files) {
    this.clear();
    this.kind = kind;
    this.files = files;
    if (kind === "frames") {
      this.urls = files.map(() => null);
      await this.show(0);
      return { width: this.img.naturalWidth, height: this.img.naturalHeight };
    }
    const video = this.video;
    this.urls = [URL.createObjectURL(files[0])];
    // A server (or a proxy) whose Content-Security-Policy lacks `media-src blob:`
    // blocks the user's own file: say so, rather than blame the codec.
    let blocked = false;
    const onViolation = (event) => {
      if (event.effectiveDirective === "media-src") blocked = true;
    };
    document.addEventListener("securitypolicyviolation", onViolation);
    const loaded = new Promise((resolve, reject) => {
      video.addEventListener("loadeddata", resolve, { once: true });
      video.addEventListener(
        "error",
        () => {
          const why = blocked ? "the page's Content-Security-Policy refuses media from blob: (media-src)" : mediaError(video);
          reject(new Error(why));
        },
        { once: true },
      );
    });
    try {
      video.src = this.urls[0];
      video.load();
      await loaded;
    } finally {
      document.removeEventListener("securitypolicyviolation", onViolation);
    }
    return { width: video.videoWidth, height: video.videoHeight, duration: video.duration };
  }

  /** The server's count of frames and its frame rate: what frame i means in a video file. */
  setTiming(frames, fps) {
    this.frames = frames;
    this.fps = fps;
  }

  /** Display frame `index`; resolves once it is decoded (and, for a video, seeked to). */
  async show(index) {
    if (this.kind === "frames") {
      if (!this.urls[index]) this.urls[index] = URL.createObjectURL(this.files[index]);
      if (this.img.getAttribute("src") !== this.urls[index]) this.img.src = this.urls[index];
      await this.img.decode();
      return;
    }
    if (this.kind !== "video" || !this.fps) return;
    const video = this.video;
    const duration = Number.isFinite(video.duration) ? video.duration : Infinity;
    const time = Math.max(0, Math.min((index + 0.5) / this.fps, duration - 1e-3));
    if (!video.seeking && Math.abs(video.currentTime - time) < 1e-6) return;
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`seeking to frame ${index} took too long`)), SEEK_TIMEOUT_MS);
      video.addEventListener(
        "seeked",
        () => {
          clearTimeout(timer);
          resolve();
        },
        { once: true },
      );
      video.currentTime = time;
    });
    // The frame is decoded; wait for it to be on screen too, where the browser says.
    if (typeof video.requestVideoFrameCallback === "function") {
      await Promise.race([
        new Promise((resolve) => video.requestVideoFrameCallback(() => resolve())),
        new Promise((resolve) => setTimeout(resolve, PAINT_TIMEOUT_MS)),
      ]);
    }
  }

  /** Seconds the browser's own timing gives the clip (NaN for frame images). */
  get duration() {
    return this.kind === "video" ? this.video.duration : NaN;
  }

  clear() {
    for (const url of this.urls) if (url) URL.revokeObjectURL(url);
    this.urls = [];
    this.files = [];
    this.kind = null;
    this.fps = 0;
    this.frames = 0;
    this.img.removeAttribute("src");
    if (this.video.getAttribute("src")) {
      this.video.removeAttribute("src");
      this.video.load();
    }
  }
}

function mediaError(video) {
  const error = video.error;
  const reasons = {
    3: "it could not be decoded",
    4: "its format or codec is not supported by this browser",
  };
  return (error && reasons[error.code]) || (error && error.message) || "it could not be loaded";
}
