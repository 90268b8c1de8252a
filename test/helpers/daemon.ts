// Daemon tests: a temporary graft home, tiny job folders from the real trainer, and a cleanup that kills
// every daemon and trainer the test started (by pid), whatever happened.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { findTrainer } from '../../src/daemon/proc.js';
import type { JobRow } from '../../src/queue/store.js';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const TRAINER = process.env.GRAFT_TRAINER ?? join(ROOT, 'trainer-cuda', 'build', 'graft-trainer');
export const CLI = join(ROOT, 'dist', 'src', 'cli.js');

function newestSource(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestSource(p) : /\.tsx?$/.test(e.name) ? statSync(p).mtimeMs : 0);
  }
  return newest;
}

/** The daemon runs from dist/ (it is a separate process): fail clearly when it is missing or stale, or the trainer is not built. */
export function requireBuilt(): void {
  if (!existsSync(TRAINER)) throw new Error(`${TRAINER} is missing: build the trainer first (make trainer), or set GRAFT_TRAINER`);
  requireDist();
}

/** The TUI and CLI run from dist/: fail clearly when it is missing or older than the sources. */
export function requireDist(): void {
  if (!existsSync(CLI) || statSync(CLI).mtimeMs < Math.max(newestSource(join(ROOT, 'src')), newestSource(join(ROOT, 'screens')))) {
    throw new Error('dist/ is missing or older than src/ and screens/: build first (make test-ts runs `npx tsc -p tsconfig.json`)');
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function until<T>(what: string, fn: () => T | undefined | false, timeoutMs = 60_000): Promise<T> {
  const start = Date.now();
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

export interface Lab {
  home: string;
  env: NodeJS.ProcessEnv;
  /** A tiny job folder (make-tiny) with its steps and saving changed. */
  tinyJob: (steps: number, saveEvery?: number, edit?: (job: any) => void) => string;
  job: (id: number) => JobRow;
  jobs: () => JobRow[];
  daemonPid: () => number | undefined;
  events: (dir: string) => any[];
  cleanup: () => void;
}

export function lab(prefix = 'graft-daemon-'): Lab {
  const root = mkdtempSync(join(tmpdir(), prefix));
  const home = join(root, 'home');
  const dirs: string[] = [];
  const env = { ...process.env, GRAFT_HOME: home, GRAFT_TRAINER: TRAINER, GRAFT_CLI: CLI, OMP_NUM_THREADS: '1' };
  const query = <T>(fn: (db: Database.Database) => T): T | undefined => {
    if (!existsSync(join(home, 'graft.db'))) return undefined;
    const db = new Database(join(home, 'graft.db'), { readonly: true, fileMustExist: true });
    db.pragma('busy_timeout = 5000');
    try { return fn(db); } catch { return undefined; } finally { db.close(); }
  };
  const l: Lab = {
    home,
    env,
    tinyJob(steps, saveEvery = 1000, edit) {
      const dir = join(root, `job${dirs.length + 1}`);
      execFileSync(TRAINER, ['make-tiny', dir, '--seed', String(dirs.length + 1)], { stdio: 'ignore' });
      const job = JSON.parse(readFileSync(join(dir, 'job.json'), 'utf8'));
      job.train.steps = steps;
      job.save.save_every = saveEvery;
      edit?.(job);
      writeFileSync(join(dir, 'job.json'), JSON.stringify(job, null, 2));
      dirs.push(dir);
      return dir;
    },
    job: (id) => query((db) => db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow)!,
    jobs: () => query((db) => db.prepare('SELECT * FROM jobs ORDER BY id').all() as JobRow[]) ?? [],
    daemonPid: () => query((db) => (db.prepare('SELECT pid FROM daemon WHERE id = 1').get() as { pid: number } | undefined)?.pid),
    events: (dir) => (existsSync(join(dir, 'metrics.jsonl')) ? readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').filter(Boolean).map((x) => JSON.parse(x)) : []),
    cleanup() {
      const kill = (pid: number | null | undefined) => { if (pid) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } } };
      kill(l.daemonPid());
      for (const j of l.jobs()) kill(j.pid);
      for (const d of dirs) kill(findTrainer(d)?.pid);
      // A daemon that lost the race but is still starting, found by its home in the environment.
      for (const e of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
        try {
          const envs = readFileSync(`/proc/${e}/environ`, 'utf8').split('\0');
          if (envs.includes(`GRAFT_HOME=${home}`) && Number(e) !== process.pid) kill(Number(e));
        } catch { /* not ours or gone */ }
      }
      rmSync(root, { recursive: true, force: true });
    },
  };
  return l;
}
