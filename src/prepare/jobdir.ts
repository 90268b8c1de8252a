// Where a config's job folder is, and making sure that folder holds the config it was prepared from.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { dumpJobYaml, procPath, type JobDoc } from '../config/document.js';
import { jobFolder } from '../config/jobfile.js';
import { expandHome } from '../paths.js';
import { writeFileAtomic } from '../util/atomic.js';
import { getAt, isPlainObject, setAt } from '../util/objpath.js';
import { PrepareError } from './errors.js';

/**
 * The job folder of a config file: the folder it is in when that is already a job folder (it holds job.json,
 * or it is <training_folder>/<name>), else <training_folder>/<name>.
 */
export function jobDirForConfig(configPath: string, doc: JobDoc, home: string): string {
  const own = dirname(resolve(configPath));
  const named = jobFolder(doc, home);
  return existsSync(join(own, 'job.json')) || resolve(named) === own ? own : named;
}

/** Dataset folders are relative to the config file; a copy elsewhere must name them absolutely. */
function withAbsoluteFolders(doc: JobDoc, configDir: string): JobDoc {
  const datasets = getAt(doc, procPath('datasets'));
  if (!Array.isArray(datasets)) return doc;
  let out = doc;
  datasets.forEach((d, i) => {
    const p = isPlainObject(d) ? d.folder_path : undefined;
    if (typeof p === 'string' && p !== '' && !isAbsolute(expandHome(p))) out = setAt(out, procPath('datasets', i, 'folder_path'), resolve(configDir, p));
  });
  return out;
}

const COPY_MARK = '# graft: copied from ';

/** The config.yaml graft keeps in the job folder for a config kept elsewhere, marked with where it came from. */
function copyText(configPath: string, doc: JobDoc): string {
  const original = readFileSync(configPath, 'utf8');
  const absolute = withAbsoluteFolders(doc, dirname(resolve(configPath)));
  const body = absolute === doc ? original : dumpJobYaml(absolute);
  return `${COPY_MARK}${resolve(configPath)} (edit that file: graft prepare and graft queue add update this copy)\n${body}`;
}

/**
 * Where a config kept outside its job folder will be copied (<job>/config.yaml), or a refusal when the job
 * folder already holds a config.yaml that the user wrote: graft replaces only its own copies.
 */
export function checkAdoptable(configPath: string, jobDir: string): string {
  const inside = join(jobDir, 'config.yaml');
  if (resolve(configPath) === inside || !existsSync(inside)) return inside;
  if (readFileSync(inside, 'utf8').startsWith(COPY_MARK)) return inside;
  throw new PrepareError(`${inside} already exists and is not a copy of ${configPath}: prepare that one (graft prepare ${jobDir}), or move it away first`);
}

/**
 * A config kept outside its job folder is copied in as config.yaml (dataset folders made absolute), so the
 * folder says what it was prepared from and the queue can prepare it again.
 */
export function adoptConfig(configPath: string, doc: JobDoc, jobDir: string): string {
  const inside = checkAdoptable(configPath, jobDir);
  if (resolve(configPath) === inside) return inside;
  const text = copyText(configPath, doc);
  if (!existsSync(inside) || readFileSync(inside, 'utf8') !== text) writeFileAtomic(inside, text);
  return inside;
}
