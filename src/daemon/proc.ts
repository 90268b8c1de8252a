// Process identity on Linux: a pid plus its start time (clock ticks since boot, field 22 of /proc/<pid>/stat),
// so a pid that the kernel reused for another program is never taken for our trainer.
import { readFileSync, readdirSync } from 'node:fs';

export function processStart(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const state = fields[0];
    if (state === 'Z' || state === 'X') return null; // a zombie has finished
    const ticks = Number(fields[19]);
    return Number.isFinite(ticks) ? ticks : null;
  } catch {
    return null;
  }
}

/** Whether the process that had this pid and start time still runs. */
export function isAlive(pid: number | null, start: number | null): boolean {
  if (!pid) return false;
  const now = processStart(pid);
  if (now === null) {
    try { process.kill(pid, 0); return start === null; } catch { return false; }
  }
  return start === null || now === start;
}

/** A trainer process working on this job folder (`graft-trainer train <dir>`), found by its command line. */
export function findTrainer(jobDir: string): { pid: number; start: number | null } | undefined {
  let entries: string[];
  try { entries = readdirSync('/proc'); } catch { return undefined; }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      const i = argv.findIndex((a) => /graft-trainer$/.test(a));
      if (i >= 0 && argv[i + 1] === 'train' && argv[i + 2] === jobDir) {
        const pid = Number(e);
        const start = processStart(pid);
        if (start !== null) return { pid, start };
      }
    } catch { /* gone meanwhile */ }
  }
  return undefined;
}
