// Reading and writing nested YAML documents by path, without mutating the input.
export type PathKey = string | number;
export type Path = readonly PathKey[];

export function getAt(obj: unknown, path: Path): unknown {
  let cur: unknown = obj;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PathKey, unknown>)[key];
  }
  return cur;
}

/** A copy of obj with the value at path set (or deleted when value is undefined). Missing parents are created. */
export function setAt<T>(obj: T, path: Path, value: unknown): T {
  const root = structuredClone(obj) as unknown as Record<PathKey, unknown>;
  let cur: Record<PathKey, unknown> = root;
  for (let i = 0; i < path.length - 1; i++) {
    const key = path[i]!;
    const next = cur[key];
    if (next === null || typeof next !== 'object') {
      if (value === undefined) return root as unknown as T;
      cur[key] = typeof path[i + 1] === 'number' ? [] : {};
    }
    cur = cur[key] as Record<PathKey, unknown>;
  }
  const last = path[path.length - 1]!;
  if (value === undefined) {
    if (Array.isArray(cur) && typeof last === 'number') cur.splice(last, 1);
    else delete cur[last];
  } else {
    cur[last] = value;
  }
  return root as unknown as T;
}

/** config.process[0].train.lr — the way YAML paths are written in messages. */
export function formatPath(path: Path): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out === '' ? key : `.${key}`;
  }
  return out;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}
