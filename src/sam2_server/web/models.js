// The models this server serves (GET v1/models), as the page's pickers show
// them. A server may serve several (MODEL_ID lists them, SAM 2 and EdgeTAM
// alike); each request then names one in `model_id`. An older server has no
// such route: the page then has no picker and sends no model_id, as before.

import { ApiError } from "./api.js";

const FAMILIES = { sam2: "SAM 2", edgetam: "EdgeTAM" };
// What a checkpoint file's name ends with, not part of a model's short name.
const SUFFIX = /\.(pt|pth|ckpt|safetensors|bin)$/i;

/**
 * The served models, or null when the server cannot say (no such route, or
 * a 401 before the token is given: `error.status` tells the caller which).
 * Each: {id, name, family, familyLabel, isDefault, loaded, video, automatic, error}.
 */
export async function fetchModels(api) {
  const answer = await api.call("models", "GET", "v1/models");
  if (!Array.isArray(answer.models)) throw new ApiError(200, "The server's list of models has no models.");
  const models = answer.models
    .map((entry) => describe(entry, answer.default))
    .filter((model) => model.id);
  const names = new Map();
  for (const model of models) names.set(model.name, (names.get(model.name) || 0) + 1);
  // Two models of the same short name (two local folders, say): the whole id tells them apart.
  for (const model of models) if (names.get(model.name) > 1) model.name = model.id;
  return models;
}

/** One entry of the answer (the contract's fields: `model_id`, `family`, `default`...). */
function describe(entry, defaultId) {
  const id = String(entry.model_id ?? "");
  const family = entry.family ? String(entry.family) : null;
  return {
    id,
    name: shortName(id),
    family,
    familyLabel: family ? FAMILIES[family] || family : "unavailable",
    isDefault: entry.default === true || (entry.default === undefined && id === defaultId),
    loaded: entry.loaded === true,
    video: entry.video === true,
    automatic: entry.automatic_masks === true,
    error: entry.error ? String(entry.error) : null,
  };
}

/** `facebook/sam2.1-hiera-tiny` → `sam2.1-hiera-tiny`; `/models/sam2_tiny.pt` → `sam2_tiny`. */
export function shortName(id) {
  const last = id.replace(/[\\/]+$/, "").split(/[\\/]/).pop() || id;
  return last.replace(SUFFIX, "") || last;
}

/**
 * Fill `select` with `models`: "name · family" each, the default (or `keep`,
 * when it is still offered) selected. `usable(model)` says whether a model may
 * be picked here, and `why(model)` what an option that may not says after its
 * name. With one model the select is disabled: it shows what answers, with
 * nothing to choose. Returns the id selected ("" when none is usable).
 */
export function fillPicker(select, models, { keep = "", usable = () => true, why = () => "" } = {}) {
  select.replaceChildren();
  for (const model of models) {
    const ok = !model.error && usable(model);
    const reason = model.error ? "unavailable" : ok ? "" : why(model);
    const label = `${model.name} · ${model.familyLabel}${reason ? ` (${reason})` : ""}`;
    const option = new Option(label, model.id);
    option.disabled = !ok;
    option.title = [model.id, model.error || (model.loaded ? "loaded" : "loads on first use")].join("\n");
    select.append(option);
  }
  const offered = (id) => models.some((m) => m.id === id && !m.error && usable(m));
  const fallback = models.find((m) => m.isDefault && offered(m.id)) || models.find((m) => offered(m.id));
  const chosen = offered(keep) ? keep : fallback ? fallback.id : "";
  select.value = chosen;
  select.disabled = models.length < 2;
  return chosen;
}

/**
 * Show a mode's `select`, filled with `models` (fillPicker's `options`), for a
 * mode whose model is `current` ("" before it has one). Returns `chosen`, the
 * id the picker shows, and `current`, the mode's model from now on: `chosen`
 * when it had none and `chosen` is the default (the model an upload in flight,
 * which named none, went to already). The mode picks `chosen` when it differs.
 */
export function offerModels(select, models, current, options) {
  const chosen = fillPicker(select, models, options);
  select.closest("label").hidden = false;
  const isDefault = models.some((m) => m.id === chosen && m.isDefault);
  return { chosen, current: !current && isDefault ? chosen : current };
}

/**
 * Make `id` the model of `mode` (an object with `modelId`), shown in `select`.
 * False when it already was: nothing changed, nothing to do.
 */
export function takeModel(mode, select, id) {
  if (id === mode.modelId) return false;
  mode.modelId = id;
  if (select.value !== id) select.value = id;
  return true;
}

/** Model `id`'s short name: the one `models` give it, else from the id itself (`unnamed` for ""). */
export function nameIn(models, id, unnamed) {
  const model = models && models.find((m) => m.id === id);
  return model ? model.name : shortName(id || unnamed);
}

/** The tooltip of a picker: the model it names, and what its choice does. */
export function pickerTitle(models, id, what) {
  const model = models.find((m) => m.id === id);
  if (!model) return what;
  const state = model.loaded ? "loaded" : "loads on first use (the first request waits for it)";
  const only = models.length < 2 ? "The only model this server serves. " : "";
  return `${only}${model.id} (${model.familyLabel}, ${state}). ${what}`;
}
