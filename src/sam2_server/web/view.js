// The stage: the photo, the mask overlay and the prompt marks, stacked at one
// fitted size. The mask canvas has the image's own resolution (the server's
// masks are full size); the marks canvas has the screen's, so points stay
// crisp and the same size whatever the zoom. Pointer input comes out as
// prompts in original image pixels. The image page and the video page each
// have one, on their own elements.

const DRAG_THRESHOLD_PX = 5;
const MAX_UPSCALE = 8;

export class Stage {
  /**
   * @param {{onPoint: (x, y, label) => void, onBox: (box) => void, backgroundMode: () => boolean}} handlers
   * @param {{wrap?, root?, photo?, mask?, marks?}} ids the elements' ids (the image page's by default)
   * @param {{allBoxes?: boolean}} options allBoxes: draw every prompt's box, not only the last one
   */
  constructor(handlers, ids = {}, options = {}) {
    this.handlers = handlers;
    this.options = options;
    const $ = (key, fallback) => document.getElementById(ids[key] || fallback);
    this.wrap = $("wrap", "stage-wrap");
    this.root = $("root", "stage");
    this.photo = $("photo", "photo");
    this.maskCanvas = $("mask", "mask");
    this.marksCanvas = $("marks", "marks");
    this.width = 0;
    this.height = 0;
    this.prompts = [];
    this.drag = null;
    this.url = null;
    new ResizeObserver(() => this.fit()).observe(this.wrap);
    this.listen();
  }

  /** Show a new image (a Blob); its size comes from the decoded file. */
  async show(blob) {
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = URL.createObjectURL(blob);
    this.photo.src = this.url;
    await this.photo.decode();
    this.setSize(this.photo.naturalWidth, this.photo.naturalHeight);
    this.root.classList.remove("empty");
  }

  /** The image's size in pixels, as the server reads it. */
  setSize(width, height) {
    if (width === this.width && height === this.height) return;
    this.width = width;
    this.height = height;
    this.maskCanvas.width = width;
    this.maskCanvas.height = height;
    this.fit();
  }

  fit() {
    if (!this.width) return;
    const style = getComputedStyle(this.wrap);
    const availableW = this.wrap.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const availableH = this.wrap.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    const scale = Math.min(availableW / this.width, availableH / this.height, MAX_UPSCALE);
    const cssW = Math.max(1, Math.floor(this.width * scale));
    const cssH = Math.max(1, Math.floor(this.height * scale));
    this.root.style.width = `${cssW}px`;
    this.root.style.height = `${cssH}px`;
    const dpr = window.devicePixelRatio || 1;
    this.marksCanvas.width = Math.round(cssW * dpr);
    this.marksCanvas.height = Math.round(cssH * dpr);
    this.drawMarks();
  }

  setMask(overlay) {
    const context = this.maskCanvas.getContext("2d");
    context.clearRect(0, 0, this.maskCanvas.width, this.maskCanvas.height);
    if (overlay) context.putImageData(overlay, 0, 0);
  }

  setPrompts(prompts) {
    this.prompts = prompts;
    this.drawMarks();
  }

  /** Image pixels under a pointer event, clamped to the image. */
  toImage(event) {
    const rect = this.marksCanvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * this.width;
    const y = ((event.clientY - rect.top) / rect.height) * this.height;
    const clamp = (v, hi) => Math.round(Math.min(Math.max(v, 0), hi) * 100) / 100;
    return [clamp(x, this.width), clamp(y, this.height)];
  }

  listen() {
    const canvas = this.marksCanvas;
    this.root.addEventListener("contextmenu", (event) => event.preventDefault());
    canvas.addEventListener("pointerdown", (event) => {
      if (event.button !== 0 && event.button !== 2) return;
      canvas.setPointerCapture(event.pointerId);
      this.drag = {
        button: event.button,
        startX: event.clientX,
        startY: event.clientY,
        start: this.toImage(event),
        end: null,
      };
    });
    canvas.addEventListener("pointermove", (event) => {
      const drag = this.drag;
      if (!drag || drag.button !== 0) return;
      const moved = Math.hypot(event.clientX - drag.startX, event.clientY - drag.startY);
      if (drag.end || moved >= DRAG_THRESHOLD_PX) {
        drag.end = this.toImage(event);
        this.drawMarks();
      }
    });
    canvas.addEventListener("pointerup", (event) => {
      const drag = this.drag;
      this.drag = null;
      if (!drag || event.button !== drag.button) return;
      if (drag.end) {
        const [x0, y0] = drag.start;
        const [x1, y1] = drag.end;
        this.drawMarks();
        if (Math.abs(x1 - x0) >= 1 && Math.abs(y1 - y0) >= 1) {
          this.handlers.onBox([Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)]);
        }
        return;
      }
      const background = drag.button === 2 || this.handlers.backgroundMode();
      this.handlers.onPoint(...drag.start, background ? 0 : 1);
    });
    canvas.addEventListener("pointercancel", () => {
      this.drag = null;
      this.drawMarks();
    });
  }

  drawMarks() {
    const canvas = this.marksCanvas;
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
    if (!this.width) return;
    const sx = canvas.width / this.width;
    const sy = canvas.height / this.height;
    const dpr = window.devicePixelRatio || 1;
    const boxes = this.prompts.filter((p) => p.box);
    const shown = this.options.allBoxes ? boxes : boxes.slice(-1);
    for (const prompt of shown) drawBox(context, prompt.box, sx, sy, dpr, false, prompt.colour);
    if (this.drag && this.drag.end) {
      const [x0, y0] = this.drag.start;
      const [x1, y1] = this.drag.end;
      drawBox(context, [x0, y0, x1, y1], sx, sy, dpr, true);
    }
    for (const prompt of this.prompts) {
      if (prompt.point) {
        drawPoint(context, prompt.point[0] * sx, prompt.point[1] * sy, prompt.label, dpr, prompt.colour);
      }
    }
  }
}

/** `colour`: the box's own colour (a video object's), else yellow. */
function drawBox(context, [x0, y0, x1, y1], sx, sy, dpr, rubber, colour) {
  context.save();
  context.lineWidth = 2 * dpr;
  context.setLineDash(rubber ? [6 * dpr, 4 * dpr] : []);
  context.strokeStyle = "rgba(0, 0, 0, 0.6)";
  context.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
  context.lineWidth = 1.25 * dpr;
  context.strokeStyle = colour || "#ffd43b";
  context.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
  context.restore();
}

/** `ring`: the outline's colour (a video object's), else white. */
function drawPoint(context, x, y, label, dpr, ring) {
  const r = 7 * dpr;
  context.save();
  context.beginPath();
  context.arc(x, y, r, 0, 2 * Math.PI);
  context.fillStyle = label === 1 ? "#2ecc71" : "#ff5b5b";
  context.fill();
  context.lineWidth = (ring ? 3 : 2) * dpr;
  context.strokeStyle = ring || "#ffffff";
  context.stroke();
  context.lineWidth = 2 * dpr;
  context.strokeStyle = "#ffffff";
  context.beginPath();
  context.moveTo(x - r * 0.5, y);
  context.lineTo(x + r * 0.5, y);
  if (label === 1) {
    context.moveTo(x, y - r * 0.5);
    context.lineTo(x, y + r * 0.5);
  }
  context.stroke();
  context.restore();
}
