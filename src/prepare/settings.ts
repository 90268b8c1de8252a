// A job's settings with every default filled in: graft's template, then the model family's defaults, then
// what the user wrote (configs written by hand may leave keys out; the TUI writes them all).
import { newDatasetBlock, DEFAULT_PROCESS } from '../config/document.js';
import type { Preset } from '../presets.js';
import { isPlainObject } from '../util/objpath.js';

type Obj = Record<string, unknown>;

/** Deep merge of plain objects; lists and scalars of the later layer replace; null counts as unset. */
export function merge(base: unknown, over: unknown): unknown {
  if (over === undefined || over === null) return structuredClone(base);
  if (!isPlainObject(base) || !isPlainObject(over)) return structuredClone(over);
  const out: Obj = structuredClone(base);
  for (const [k, v] of Object.entries(over)) out[k] = merge(base[k], v);
  return out;
}

export interface Settings {
  process: Obj;
  datasets: Obj[];
}

export function resolveSettings(process: Obj, preset: Preset | undefined): Settings {
  const familyDefaults = (preset?.defaults ?? {}) as Obj;
  const { datasets: familyDatasets, ...familyRest } = familyDefaults;
  const merged = merge(merge(DEFAULT_PROCESS, familyRest), process) as Obj;
  const datasetBase = merge(newDatasetBlock(), Array.isArray(familyDatasets) ? familyDatasets[0] : undefined);
  const datasets = (Array.isArray(process.datasets) ? process.datasets : []).map((d) => merge(datasetBase, d) as Obj);
  return { process: merged, datasets };
}

/** A value at a path of a settings object (the defaults guarantee most exist). */
export function at(obj: Obj, ...path: string[]): unknown {
  let cur: unknown = obj;
  for (const k of path) cur = isPlainObject(cur) ? cur[k] : undefined;
  return cur;
}
