// Training a finished job further, as the reference toolkit allows: raise train.steps and run again; the
// trainer resumes from the job's state/ (the last step it saved) and trains on to the new total.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { dumpJobYaml, parseJobYaml, procPath } from '../config/document.js';
import { readMetrics } from '../monitor/metrics.js';
import { writeFileAtomic } from '../util/atomic.js';
import { getAt, setAt } from '../util/objpath.js';

/** The last step a job's runs reached (its metrics), 0 before any. */
export function trainedStep(jobDir: string): number {
  const m = readMetrics(join(jobDir, 'metrics.jsonl'));
  return m.end?.step ?? m.points[m.points.length - 1]?.step ?? 0;
}

/**
 * The config text with config.process[0].train.steps set, changing only the digits of that one line so the
 * file keeps its comments and layout; undefined when the line cannot be found that way.
 */
export function withTrainStepsLine(text: string, steps: number): string | undefined {
  const lines = text.split('\n');
  const key = (name: string) => new RegExp(`^(\\s*)(?:-\\s+)?["']?${name}["']?\\s*:`);
  const indent = (l: string) => /^\s*/.exec(l)![0].length;
  const t = lines.findIndex((l) => key('train').test(l));
  if (t < 0) return undefined;
  const base = indent(lines[t]!);
  for (let i = t + 1; i < lines.length; i++) {
    const l = lines[i]!;
    if (l.trim() === '' || l.trimStart().startsWith('#')) continue;
    if (indent(l) <= base) break;
    const m = /^(\s*["']?steps["']?\s*:\s*)(\d+)(.*)$/.exec(l);
    if (m) { lines[i] = `${m[1]}${steps}${m[3]}`; return lines.join('\n'); }
  }
  return undefined;
}

/** Write train.steps into a job's config (YAML or job.json); says whether comments and layout survived. */
export function writeTrainSteps(file: string, steps: number): { kept: boolean } {
  const text = readFileSync(file, 'utf8');
  if (file.endsWith('.json')) {
    const job = JSON.parse(text) as { train?: Record<string, unknown> };
    job.train = { ...job.train, steps };
    writeFileAtomic(file, `${JSON.stringify(job, null, 2)}\n`);
    return { kept: false };
  }
  const doc = parseJobYaml(text, file);
  const want = setAt(doc, procPath('train', 'steps'), steps);
  const edited = withTrainStepsLine(text, steps);
  // The line edit must mean exactly the intended document; otherwise the document is written whole.
  if (edited !== undefined && isDeepStrictEqual(parseJobYaml(edited, file), want)) {
    writeFileAtomic(file, edited);
    return { kept: true };
  }
  writeFileAtomic(file, dumpJobYaml(want));
  return { kept: false };
}

/** train.steps as the job's config says now (YAML config or job.json). */
export function configuredSteps(file: string): number | undefined {
  try {
    const text = readFileSync(file, 'utf8');
    const v = file.endsWith('.json') ? (JSON.parse(text) as { train?: { steps?: unknown } }).train?.steps : getAt(parseJobYaml(text, file), procPath('train', 'steps'));
    return typeof v === 'number' ? v : undefined;
  } catch { return undefined; }
}
