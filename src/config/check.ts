// Everything graft has to say about a job config before it runs, in one place for `graft validate`, the
// queue and preparation: errors (invalid), what graft cannot run yet, warnings, and the dataset folders.
import { isAbsolute, resolve } from 'node:path';
import { folderProblem } from '../datasets/folder.js';
import { expandHome } from '../paths.js';
import { familyFor, referenceOnlyFamily, type Preset } from '../presets.js';
import { formatPath, getAt, isPlainObject } from '../util/objpath.js';
import { procPath, type JobDoc } from './document.js';
import { unsupportedIssues } from './support.js';
import { unknownKeys, validateJob, type Issue } from './validate.js';
import { jobWarnings, type WarningContext } from './warnings.js';

export interface JobCheck {
  errors: Issue[];
  unsupported: Issue[];
  warnings: Issue[];
  /** Keys graft does not use (kept on save). */
  ignored: string[];
  preset: Preset | undefined;
  /** The family's name: the preset's, or a reference family graft knows by name only. */
  family: string;
}

/** A dataset's folder as preparation reads it: ~ expanded, relative to the config file's folder. */
export function datasetFolder(folderPath: string, configDir: string): string {
  const p = expandHome(folderPath);
  return isAbsolute(p) ? p : resolve(configDir, p);
}

/** Dataset folders that are missing, not folders, or hold no images: errors now rather than at prepare time. */
export function datasetFolderIssues(doc: JobDoc, configDir: string): Issue[] {
  const blocks = getAt(doc, procPath('datasets'));
  if (!Array.isArray(blocks)) return [];
  const out: Issue[] = [];
  blocks.forEach((b, i) => {
    if (!isPlainObject(b) || typeof b.folder_path !== 'string' || b.folder_path.trim() === '') return;
    const path = formatPath(procPath('datasets', i, 'folder_path'));
    const folder = datasetFolder(b.folder_path, configDir);
    const problem = folderProblem(folder);
    if (!problem) return;
    const relative = !isAbsolute(expandHome(b.folder_path)) && problem.startsWith('no such folder') ? ` (relative to the config file's folder ${configDir})` : '';
    out.push({ level: 'error', rule: 'dataset-folder', path, message: `${path}: ${problem}${relative}` });
  });
  return out;
}

/**
 * The whole check. With configDir the dataset folders are looked at too (the CLI and the queue; the New Job
 * form counts them in the background instead).
 */
export function checkJob(doc: JobDoc, presets: Preset[], opts: { configDir?: string } & Omit<WarningContext, 'preset' | 'presets'> = {}): JobCheck {
  const preset = familyFor(getAt(doc, procPath('model')), presets);
  const errors = validateJob(doc, presets);
  const unsupported = unsupportedIssues(doc, presets);
  if (opts.configDir !== undefined && unsupported.length === 0) errors.push(...datasetFolderIssues(doc, opts.configDir));
  return {
    errors,
    unsupported,
    warnings: jobWarnings(doc, { ...opts, preset, presets }),
    ignored: unknownKeys(doc),
    preset,
    family: preset?.label ?? referenceOnlyFamily(getAt(doc, procPath('model')))?.label ?? 'unknown family',
  };
}

/** One line for a refusal: the first problem, and how many more `graft validate` lists. */
export function refusal(file: string, check: JobCheck): string | undefined {
  const first = check.errors[0] ?? check.unsupported[0];
  if (!first) return undefined;
  const more = check.errors.length + check.unsupported.length - 1;
  return `${file}: ${first.message}${more > 0 ? ` (and ${more} more: graft validate ${file})` : ''}`;
}
