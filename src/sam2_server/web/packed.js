// Packed arrays of the native API: {dtype: "float32", shape: [...], data: base64}
// holding little-endian, C-order bytes. One Float32Array views them whole:
// every browser this page runs on is little-endian.

/** Decode a packed array into {shape, values: Float32Array}. */
export function decodePacked(packed) {
  if (!packed || packed.dtype !== "float32") {
    throw new Error(`unsupported packed array dtype: ${packed && packed.dtype}`);
  }
  const bytes = base64ToBytes(packed.data);
  const values = new Float32Array(bytes.buffer, 0, bytes.byteLength >> 2);
  const expected = packed.shape.reduce((a, b) => a * b, 1);
  if (values.length !== expected || bytes.byteLength % 4 !== 0) {
    throw new Error(`packed array has ${bytes.byteLength} bytes for shape [${packed.shape}]`);
  }
  return { shape: packed.shape, values };
}

/** Pack float32 values with the given shape. */
export function encodePacked(values, shape) {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return { dtype: "float32", shape, data: bytesToBase64(bytes) };
}

/**
 * Candidate `index` of a C×H×W (or 1×C×H×W) logits array, packed as the
 * 1×H×W `mask_input` the next prompt refines.
 */
export function candidateMaskInput(logits, index) {
  const [h, w] = logits.shape.slice(-2);
  const size = h * w;
  const slice = logits.values.subarray(index * size, (index + 1) * size);
  if (slice.length !== size) throw new Error(`no candidate ${index} in the logits`);
  return encodePacked(slice, [1, h, w]);
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function bytesToBase64(bytes) {
  // String.fromCharCode takes its arguments on the stack: go in chunks.
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
