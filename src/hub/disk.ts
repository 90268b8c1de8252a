// Free space is checked before a download starts: a FLUX.1 model is 34 GB, and running out half-way leaves
// the user with nothing but a full disk.
import { existsSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import { formatBytes } from './progress.js';
import { HubError } from './errors.js';

export type FreeSpaceProbe = (dir: string) => number;

/** Bytes an unprivileged process may still write on the filesystem holding dir (or its nearest existing parent). */
export const freeBytes: FreeSpaceProbe = (dir) => {
  let d = dir;
  while (!existsSync(d) && dirname(d) !== d) d = dirname(d);
  const s = statfsSync(d);
  return s.bavail * s.bsize;
};

export function checkFreeSpace(needed: number, dir: string, probe: FreeSpaceProbe = freeBytes): void {
  if (needed <= 0) return;
  const free = probe(dir);
  if (free < needed) {
    throw new HubError(`not enough disk space: the download needs ${formatBytes(needed)} (${needed} bytes) more in ${dir}, ` +
      `which has ${formatBytes(free)} (${free} bytes) free: free some space, or set HF_HUB_CACHE to a folder on a larger disk`);
  }
}
