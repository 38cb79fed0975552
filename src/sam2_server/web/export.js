// The video page's exports, written here with nothing from elsewhere: a ZIP
// of PNG masks (one per frame and object) and a COCO-style JSON of the
// server's own RLE masks. The ZIP is store-only (PNGs are compressed
// already); the PNGs are 8-bit grayscale, 255 inside, as the server's own PNG
// masks, deflated by the browser's CompressionStream. `download` saves a file
// for both pages (the image page's mask PNG too).

import { forEachRun, paintRle } from "./everything.js";

// ---- CRC-32 (ZIP's and PNG's: polynomial 0xEDB88320, reflected) ---------

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 of `bytes` (Uint8Arrays, in order), continuing from `crc` (0 to start). */
function crc32(bytes, crc = 0) {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// ---- ZIP (store only) ---------------------------------------------------

const ZIP_MAX_ENTRIES = 0xffff;
const ZIP_MAX_BYTES = 0xffffffff; // offsets and sizes without ZIP64

/**
 * A store-only ZIP of `entries` ({name, data: Uint8Array}), as a Blob. Names
 * are UTF-8 (flag bit 11); the time is `date`'s (local, as ZIP's DOS fields are).
 */
export function zipStore(entries, date = new Date()) {
  if (entries.length > ZIP_MAX_ENTRIES) {
    throw new Error(`${entries.length} files are more than a ZIP without ZIP64 holds (65,535)`);
  }
  const encoder = new TextEncoder();
  const time = (date.getHours() << 11) | (date.getMinutes() << 5) | (date.getSeconds() >> 1);
  const day = (Math.max(date.getFullYear() - 1980, 0) << 9) | ((date.getMonth() + 1) << 5) | date.getDate();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const { name, data } of entries) {
    const nameBytes = encoder.encode(name);
    const crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true); // version needed: 2.0
    local.setUint16(6, 0x0800, true); // UTF-8 names
    local.setUint16(8, 0, true); // stored
    local.setUint16(10, time, true);
    local.setUint16(12, day, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true);
    local.setUint32(22, data.length, true);
    local.setUint16(26, nameBytes.length, true);
    local.setUint16(28, 0, true);

    const header = new DataView(new ArrayBuffer(46));
    header.setUint32(0, 0x02014b50, true);
    header.setUint16(4, 20, true); // made by: 2.0, MS-DOS attributes
    header.setUint16(6, 20, true);
    header.setUint16(8, 0x0800, true);
    header.setUint16(10, 0, true);
    header.setUint16(12, time, true);
    header.setUint16(14, day, true);
    header.setUint32(16, crc, true);
    header.setUint32(20, data.length, true);
    header.setUint32(24, data.length, true);
    header.setUint16(28, nameBytes.length, true);
    // extra, comment, disk, internal and external attributes: 0
    header.setUint32(42, offset, true);

    parts.push(new Uint8Array(local.buffer), nameBytes, data);
    central.push(new Uint8Array(header.buffer), nameBytes);
    offset += 30 + nameBytes.length + data.length;
    if (offset > ZIP_MAX_BYTES) throw new Error("the masks are more than a ZIP without ZIP64 holds (4 GiB)");
  }
  const centralSize = central.reduce((sum, part) => sum + part.length, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, centralSize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, new Uint8Array(end.buffer)], { type: "application/zip" });
}

// ---- PNG (8-bit grayscale) ----------------------------------------------

const PNG_SIGNATURE = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** A width×height grayscale PNG of `pixels` (row-major Uint8Array, one byte each). */
export async function encodePngGray(pixels, width, height) {
  if (pixels.length !== width * height) throw new Error("PNG: pixels do not match the size");
  const raw = new Uint8Array((width + 1) * height); // each row: filter type 0, then the row
  for (let y = 0; y < height; y++) raw.set(pixels.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  const ihdr = new DataView(new ArrayBuffer(13));
  ihdr.setUint32(0, width);
  ihdr.setUint32(4, height);
  ihdr.setUint8(8, 8); // bit depth
  ihdr.setUint8(9, 0); // grayscale
  // compression 0 (deflate), filter 0, interlace 0
  const idat = await deflate(raw);
  const chunks = [
    PNG_SIGNATURE,
    chunk("IHDR", new Uint8Array(ihdr.buffer)),
    chunk("IDAT", idat),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** zlib-wrapped deflate (what PNG's IDAT holds), by the browser. */
async function deflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// ---- masks ---------------------------------------------------------------

/**
 * A COCO RLE mask ({size: [h, w], counts: string}) as a row-major Uint8Array
 * of its own size, 255 inside and 0 outside (the server's PNG masks' values).
 */
export function decodeMask(rle) {
  const [height, width] = sizeOf(rle);
  const pixels = new Uint8Array(width * height);
  paintRle(rle, width, height, pixels, 255);
  return { pixels, width, height };
}

/**
 * A COCO RLE mask's area and COCO bbox [x, y, w, h] (pycocotools' area and
 * toBbox: [0, 0, 0, 0] for an empty mask), from its runs: no frame of pixels.
 */
export function maskBounds(rle) {
  const [height, width] = sizeOf(rle);
  let area = 0;
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  forEachRun(rle, width, height, (x, y, n) => {
    area += n;
    if (x < x0) x0 = x;
    if (x > x1) x1 = x;
    if (y < y0) y0 = y;
    if (y + n - 1 > y1) y1 = y + n - 1;
  });
  const bbox = area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0];
  return { area, bbox };
}

/** The [height, width] a mask's RLE gives itself. */
function sizeOf(rle) {
  if (!rle || !Array.isArray(rle.size)) throw new Error("a mask is not COCO RLE with a string of counts");
  return rle.size;
}

/**
 * The COCO-style JSON of a video's masks (layout: docs/page.md): one "image"
 * per frame with masks, one annotation per frame and object holding the
 * server's RLE as it came.
 * @param {{videoId, modelId, name, width, height, frames, fps}} video
 * @param {Array<[number, Array<[number, {size, counts}]>]>} masks [frame, [[objectId, rle], ...]], in order
 */
export function cocoJson(video, masks, objectIds, date = new Date()) {
  const images = [];
  const annotations = [];
  for (const [frame, objects] of masks) {
    const imageId = frame + 1; // COCO ids start at 1
    images.push({
      id: imageId,
      frame_index: frame,
      file_name: frameName(video, frame),
      width: video.width,
      height: video.height,
    });
    for (const [objectId, rle] of objects) {
      const { area, bbox } = maskBounds(rle);
      annotations.push({
        id: annotations.length + 1,
        image_id: imageId,
        frame_index: frame,
        object_id: objectId,
        category_id: objectId,
        segmentation: { size: rle.size, counts: rle.counts },
        area,
        bbox,
        iscrowd: 0,
      });
    }
  }
  return {
    info: {
      description: `SAM2 masks of ${video.name}`,
      version: "1.0",
      date_created: date.toISOString(),
      video_id: video.videoId,
      model_id: video.modelId,
      source: video.name,
      frames: video.frames,
      width: video.width,
      height: video.height,
      fps: video.fps,
    },
    images,
    annotations,
    categories: objectIds.map((id) => ({ id, name: `object ${id}`, supercategory: "object" })),
  };
}

/** The name a frame goes by: the frame file's own, or the clip's name and the index. */
function frameName(video, frame) {
  if (video.frameNames && video.frameNames[frame]) return video.frameNames[frame];
  return `${video.name}#${String(frame).padStart(5, "0")}`;
}

/**
 * Save `blob` as the file `name`, through a link clicked for the user. Its
 * object URL is revoked `keepMs` later, once the browser has taken the file.
 */
export function download(blob, name, keepMs) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), keepMs);
}

/** The ZIP's path of one mask: `object_<id>/<frame, 5 digits>.png`. */
export function maskPath(objectId, frame) {
  return `object_${objectId}/${String(frame).padStart(5, "0")}.png`;
}
