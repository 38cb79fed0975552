// "Segment everything": SAM2's automatic masks as one overlay. The masks come
// as COCO RLE (the server's default, and far smaller than a PNG each for the
// hundreds of compact masks a real model finds); decoding the runs here is a
// few lines and needs no canvas round trip per mask.
//
// Each mask gets its own hue, in golden-angle steps so that no two masks of
// the list look alike. Larger masks are painted first and every pixel shows
// only the topmost mask's colour: the small masks that sit on a large one stay
// visible, instead of a muddy mix of every mask that covers the pixel.

const GOLDEN_ANGLE = 137.508;
const FILL_ALPHA = 120; // the same look as a clicked mask (mask.js)
const EDGE_ALPHA = 255;

// SAM2AutomaticMaskGenerator's parameters (contract: "Automatic masks"), with
// the type each is sent as. Only these are taken from the page's address.
const PARAMETERS = {
  points_per_side: "int",
  points_per_batch: "int",
  pred_iou_thresh: "float",
  stability_score_thresh: "float",
  stability_score_offset: "float",
  mask_threshold: "float",
  box_nms_thresh: "float",
  crop_n_layers: "int",
  crop_nms_thresh: "float",
  crop_overlap_ratio: "float",
  crop_n_points_downscale_factor: "int",
  min_mask_region_area: "int",
  use_m2m: "bool",
  multimask_output: "bool",
};

/**
 * Generator parameters given in the page's query string, e.g.
 * `/?pred_iou_thresh=0.6&min_mask_region_area=100`: the knobs without a control
 * of their own, for whoever needs them (and for tests on random weights, whose
 * masks never pass the default thresholds). A value that does not parse is
 * sent as written, so the server's 400 names it rather than the page hiding it.
 */
export function parametersFromQuery(search) {
  const params = {};
  for (const [name, raw] of new URLSearchParams(search)) {
    const type = PARAMETERS[name];
    if (!type) continue;
    if (type === "bool") {
      params[name] = raw === "true" || raw === "1" ? true : raw === "false" || raw === "0" ? false : raw;
    } else {
      const value = raw.trim() === "" ? NaN : Number(raw);
      params[name] = Number.isFinite(value) ? value : raw;
    }
  }
  return params;
}

/**
 * The run lengths of a COCO RLE `counts` string, as pycocotools' rleFrString
 * reads them: 5 bits per character (offset 48), 0x20 = more to come, 0x10 on
 * the last one = negative; from the third run on, each is a difference from
 * the run two before.
 */
export function decodeCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let value = 0;
    let scale = 1; // 32 ** k, kept as a float: 5 * k passes 31 bits for long runs
    let more = true;
    while (more) {
      if (p >= text.length) throw new Error("truncated RLE counts");
      const c = text.charCodeAt(p++) - 48;
      value += (c & 0x1f) * scale;
      scale *= 32;
      more = (c & 0x20) !== 0;
      if (!more && c & 0x10) value -= scale;
    }
    if (counts.length > 2) value += counts[counts.length - 2];
    counts.push(value);
  }
  return counts;
}

/** The tint of mask `index`: evenly spread, saturated hues. */
export function maskColour(index) {
  const hue = (index * GOLDEN_ANGLE) % 360;
  return hslToRgb(hue, 0.8, 0.55);
}

/**
 * One overlay for the automatic masks' `records` (as the server answered
 * them, best first) on a width×height image: {overlay: ImageData, visible},
 * `visible` being how many masks still show at least one pixel.
 */
export function everythingOverlay(records, width, height) {
  const size = width * height;
  // owner[y * width + x]: the record painted last (topmost) there, -1 for none.
  const owner = new Int32Array(size).fill(-1);
  const order = records
    .map((record, index) => ({ index, area: record.area }))
    .sort((a, b) => b.area - a.area || a.index - b.index);
  for (const { index } of order) {
    paintRle(records[index].segmentation, width, height, owner, index);
  }

  const colours = records.map((_, index) => maskColour(index));
  const { overlay, shown } = ownerOverlay(owner, colours, width, height);
  return { overlay, visible: shown.reduce((a, b) => a + b, 0) };
}

/**
 * The overlay of an `owner` map (per pixel, the index of the mask shown there,
 * -1 for none): each mask's fill in `colours[index]`, its outline lighter.
 * Also `shown`: 1 for each index that owns at least one pixel.
 */
export function ownerOverlay(owner, colours, width, height) {
  const overlay = new ImageData(width, height);
  const out = overlay.data;
  const shown = new Uint8Array(colours.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      const o = owner[i];
      if (o < 0) continue;
      shown[o] = 1;
      // The outline wherever the topmost mask changes, so touching masks of
      // similar hues still read as two.
      const edge =
        (x > 0 && owner[i - 1] !== o) ||
        (x < width - 1 && owner[i + 1] !== o) ||
        (y > 0 && owner[i - width] !== o) ||
        (y < height - 1 && owner[i + width] !== o);
      const [r, g, b] = colours[o];
      const k = i * 4;
      out[k] = edge ? (r + 255) >> 1 : r;
      out[k + 1] = edge ? (g + 255) >> 1 : g;
      out[k + 2] = edge ? (b + 255) >> 1 : b;
      out[k + 3] = edge ? EDGE_ALPHA : FILL_ALPHA;
    }
  }
  return { overlay, shown };
}

/**
 * The inside of a COCO RLE mask on a width×height frame, one column at a time:
 * `piece(x, y, n)` for each n pixels down column x from row y. The runs go down
 * the columns (Fortran order), alternating outside and inside, starting
 * outside. Throws on what is not such a mask, or not one of that size.
 */
export function forEachRun(rle, width, height, piece) {
  if (!rle || typeof rle.counts !== "string") {
    throw new Error("a mask is not COCO RLE with a string of counts");
  }
  const [h, w] = rle.size;
  if (h !== height || w !== width) {
    throw new Error(`a mask is ${w}×${h}, the image ${width}×${height}`);
  }
  const counts = decodeCounts(rle.counts);
  let total = 0;
  for (const c of counts) total += c;
  if (total !== width * height || counts.some((c) => c < 0)) {
    throw new Error("a mask's RLE counts do not cover the image");
  }
  let x = 0;
  let y = 0;
  for (let run = 0; run < counts.length; run++) {
    let n = counts[run];
    if (run % 2 === 0) {
      // Outside: skip whole columns at once, then the rest of one.
      x += Math.floor((y + n) / height);
      y = (y + n) % height;
      continue;
    }
    while (n > 0) {
      const down = Math.min(n, height - y);
      piece(x, y, down);
      n -= down;
      y += down;
      if (y === height) {
        y = 0;
        x++;
      }
    }
  }
}

/** Set `owner` (a row-major typed array, width×height) to `index` on the mask's pixels. */
export function paintRle(rle, width, height, owner, index) {
  forEachRun(rle, width, height, (x, y, n) => {
    for (let i = y * width + x; n-- > 0; i += width) owner[i] = index;
  });
}

function hslToRgb(hue, saturation, lightness) {
  const a = saturation * Math.min(lightness, 1 - lightness);
  const channel = (n) => {
    const k = (n + hue / 30) % 12;
    return Math.round(255 * (lightness - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [channel(0), channel(8), channel(4)];
}
