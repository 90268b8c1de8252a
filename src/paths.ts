// Where graft keeps its state, and where its own files (presets) live.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The graft home folder: SQLite queue, registered datasets, default job outputs. GRAFT_HOME overrides ~/.graft. */
export function graftHome(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.GRAFT_HOME;
  if (fromEnv && fromEnv.trim() !== '') return resolve(fromEnv);
  return join(homedir(), '.graft');
}

/** Default root for job folders of new jobs; relative training folders are resolved against the home too. */
export function defaultTrainingFolder(home = graftHome()): string {
  return join(home, 'output');
}

/** The package root (the folder with package.json and presets/), whether running from src/ via tsx or from dist/src/. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'presets'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('graft: cannot find the package root (package.json next to presets/)');
}

export function presetsDir(): string {
  return join(packageRoot(), 'presets');
}

/** Expand a leading ~ to the user's home folder. */
export function expandHome(p: string): string {
  if (p === '~') return homedir();
  if (p.startsWith('~/')) return join(homedir(), p.slice(2));
  return p;
}
