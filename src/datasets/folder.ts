// Whether a folder can be a dataset: it exists, is a folder, and holds pictures graft reads. Asked when a
// dataset is named (Datasets screen) and when a job is validated or queued, so the answer comes at once.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { extname } from 'node:path';
import { IMAGE_EXTS } from './scan.js';

/** What is wrong with the folder as a dataset, or undefined when it holds pictures. */
export function folderProblem(folder: string): string | undefined {
  if (!existsSync(folder)) return `no such folder: ${folder}`;
  if (!statSync(folder).isDirectory()) return `${folder} is a file, not a folder of images`;
  let names: string[];
  try { names = readdirSync(folder); } catch (err) { return `cannot read ${folder}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`; }
  if (!names.some((f) => IMAGE_EXTS.includes(extname(f).toLowerCase()))) return `no images in ${folder} (graft reads ${IMAGE_EXTS.join(' ')} files)`;
  return undefined;
}
