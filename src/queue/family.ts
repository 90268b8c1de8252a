// The model family of a queued job, for the TUI's header: from its config.yaml (or the config job.json
// carries), read once per file version.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseJobYaml, procPath } from '../config/document.js';
import { familyFor, type Preset } from '../presets.js';
import { getAt } from '../util/objpath.js';
import { jobDirOf } from './queue.js';
import type { JobRow } from './store.js';

const cache = new Map<string, { mtimeMs: number; model: unknown }>();

function modelOf(file: string): unknown {
  try {
    const { mtimeMs } = statSync(file);
    const hit = cache.get(file);
    if (hit && hit.mtimeMs === mtimeMs) return hit.model;
    const text = readFileSync(file, 'utf8');
    const model = file.endsWith('.json')
      ? getAt((JSON.parse(text) as { config?: unknown }).config, ['model'])
      : getAt(parseJobYaml(text, file), procPath('model'));
    cache.set(file, { mtimeMs, model });
    return model;
  } catch {
    return undefined;
  }
}

export function jobFamily(job: JobRow, presets: Preset[]): Preset | undefined {
  const dir = jobDirOf(job);
  const candidates = [job.config_path, join(dir, 'config.yaml'), join(dir, 'job.json')];
  const file = candidates.find((f) => /\.(ya?ml|json)$/i.test(f) && existsSync(f));
  return file ? familyFor(modelOf(file), presets) : undefined;
}
