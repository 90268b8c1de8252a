// Saving and loading job configs: config.yaml in the job folder, written atomically, registered as a draft.
import { readFileSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { isAbsolute, join, resolve } from 'node:path';
import { expandHome, graftHome } from '../paths.js';
import type { Preset } from '../presets.js';
import { trainedStep, writeTrainSteps } from '../queue/extend.js';
import { jobDirOf } from '../queue/queue.js';
import type { JobRow, Store } from '../queue/store.js';
import { writeFileAtomic } from '../util/atomic.js';
import { getAt, setAt } from '../util/objpath.js';
import { dumpJobYaml, parseJobYaml, procPath, type JobDoc } from './document.js';
import { unknownKeys, validateJob, type Issue } from './validate.js';
import { gpuIndexOf } from './warnings.js';

/** <training_folder>/<name>; a relative training folder is taken inside the graft home, not the current directory. */
export function jobFolder(doc: JobDoc, home = graftHome()): string {
  const tf = getAt(doc, procPath('training_folder'));
  const folder = typeof tf === 'string' && tf.trim() !== '' ? expandHome(tf) : 'output';
  const root = isAbsolute(folder) ? folder : join(home, folder);
  return join(root, String(getAt(doc, ['config', 'name'])));
}

export class SaveRefused extends Error {
  constructor(readonly issues: Issue[]) {
    super(`cannot save: ${issues.length} error${issues.length === 1 ? '' : 's'}. First: ${issues[0]?.message}`);
  }
}

export interface Saved {
  configPath: string;
  job: JobRow;
  /** A finished (or stopped, failed) job whose steps were raised: it trains on from this step when resumed. */
  extendedFrom?: number;
}

/** Validate, write config.yaml atomically and register the job as a draft. Nothing is written if anything is wrong. */
export function saveJob(doc: JobDoc, presets: Preset[], store: Store): Saved {
  const errors = validateJob(doc, presets);
  if (errors.length > 0) throw new SaveRefused(errors);
  const configPath = join(jobFolder(doc, store.home), 'config.yaml');
  const existing = store.jobByConfigPath(configPath);
  if (existing && existing.state !== 'draft') return extendJob(existing, doc);
  writeFileAtomic(configPath, dumpJobYaml(doc));
  const job = store.saveDraft(String(getAt(doc, ['config', 'name'])), configPath, gpuIndexOf(getAt(doc, procPath('device'))));
  return { configPath, job };
}

/**
 * Saving over a job that has run: only raising its steps is allowed (the reference toolkit trains a finished
 * job further the same way), and only while it does not run. Its config keeps its comments and layout.
 */
function extendJob(job: JobRow, doc: JobDoc): Saved {
  const other = 'Choose another Training Name to save a new job with other settings.';
  if (!['finished', 'stopped', 'failed'].includes(job.state)) throw new Error(`job "${job.name}" is ${job.state}; its config cannot change while it is in the queue. ${other}`);
  const before = parseJobYaml(readFileSync(job.config_path, 'utf8'), job.config_path);
  const steps = getAt(doc, procPath('train', 'steps'));
  const from = trainedStep(jobDirOf(job));
  if (!isDeepStrictEqual(setAt(before, procPath('train', 'steps'), steps), doc) || typeof steps !== 'number') {
    throw new Error(`job "${job.name}" has run (${job.state}): its config can only be extended by raising Steps. ${other}`);
  }
  if (steps <= from) throw new Error(`job "${job.name}" has trained ${from} steps: raise Steps above ${from} to train it further`);
  writeTrainSteps(job.config_path, steps);
  return { configPath: job.config_path, job, extendedFrom: from };
}

export interface Loaded {
  path: string;
  doc: JobDoc;
  /** Keys graft does not use; kept on save, reported once. */
  ignored: string[];
}

export function loadJobFile(path: string): Loaded {
  const full = resolve(expandHome(path));
  let text: string;
  try {
    text = readFileSync(full, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(code === 'ENOENT' ? `no such file: ${full}` : `cannot read ${full}: ${code ?? (err as Error).message}`);
  }
  const doc = parseJobYaml(text, full);
  return { path: full, doc, ignored: unknownKeys(doc) };
}
