// A mask PNG from the server (grayscale, 255 inside) turned into a tinted
// overlay: the inside filled translucent, its outline opaque, so both the
// object and the pixels under it stay visible.

import { base64ToBytes } from "./packed.js";

const FILL_ALPHA = 120;
const EDGE_ALPHA = 255;

/**
 * Decode a base64 PNG mask into {overlay: ImageData, area} at width×height.
 * @param {[number, number, number]} rgb the tint
 */
export async function maskOverlay(pngBase64, width, height, rgb) {
  const blob = new Blob([base64ToBytes(pngBase64)], { type: "image/png" });
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingEnabled = false;
  context.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const gray = context.getImageData(0, 0, width, height).data;

  const inside = new Uint8Array(width * height);
  let area = 0;
  for (let i = 0; i < inside.length; i++) {
    if (gray[i * 4] >= 128) {
      inside[i] = 1;
      area++;
    }
  }
  const overlay = new ImageData(width, height);
  const out = overlay.data;
  const [r, g, b] = rgb;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      if (!inside[i]) continue;
      const edge =
        x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
        !inside[i - 1] || !inside[i + 1] || !inside[i - width] || !inside[i + width];
      const o = i * 4;
      // The outline in a lighter shade of the tint.
      out[o] = edge ? (r + 255) >> 1 : r;
      out[o + 1] = edge ? (g + 255) >> 1 : g;
      out[o + 2] = edge ? (b + 255) >> 1 : b;
      out[o + 3] = edge ? EDGE_ALPHA : FILL_ALPHA;
    }
  }
  return { overlay, area };
}
