// One writer per blob: two jobs preparing the same model (the daemon runs one per GPU), or a job and a
// `graft download`, would otherwise append to the same .incomplete file. The lock is a file created
// exclusively, holding host and pid; a lock whose process is gone (same host) or that has not been touched
// for STALE_MS (another host sharing the cache) is taken over.
import { closeSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync, utimesSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const STALE_MS = 120_000;
const TOUCH_MS = 30_000;

export interface BlobLock {
  /** Marks the lock alive (a holder on another host is judged by the file's age). */
  touch(): void;
  release(): void;
}

function holderAlive(text: string, file: string): boolean {
  const [host, pid] = text.trim().split(':');
  if (host === hostname() && /^\d+$/.test(pid ?? '')) {
    try { process.kill(Number(pid), 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
  }
  try { return Date.now() - statSync(file).mtimeMs < STALE_MS; } catch { return false; }
}

function tryLock(file: string): BlobLock | string {
  mkdirSync(dirname(file), { recursive: true });
  let fd: number;
  try {
    fd = openSync(file, 'wx', 0o644);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    let text = '';
    try { text = readFileSync(file, 'utf8'); } catch { return tryLock(file); }
    if (holderAlive(text, file)) return text.trim();
    try { unlinkSync(file); } catch { /* someone else took it over first */ }
    return tryLock(file);
  }
  writeSync(fd, `${hostname()}:${process.pid}\n`);
  closeSync(fd);
  let touched = Date.now();
  return {
    touch() {
      if (Date.now() - touched < TOUCH_MS) return;
      touched = Date.now();
      try { utimesSync(file, new Date(), new Date()); } catch { /* taken over: the checksum still guards the blob */ }
    },
    release() {
      try { unlinkSync(file); } catch { /* already gone */ }
    },
  };
}

/** Takes the lock, waiting while another live process holds it (onWait is told once who). */
export async function lockBlob(file: string, onWait: (holder: string) => void, signal?: AbortSignal, pollMs = 500): Promise<BlobLock> {
  let told = false;
  for (;;) {
    const got = tryLock(file);
    if (typeof got !== 'string') return got;
    if (!told) { onWait(got); told = true; }
    await sleep(pollMs, undefined, { signal });
  }
}
