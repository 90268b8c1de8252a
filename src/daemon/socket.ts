// Where the daemon listens: <GRAFT_HOME>/daemon.sock (mode 0600, in the 0700 home), or a short name in the
// temp folder when the home's path is too long for a Unix socket (about 100 bytes).
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function socketPath(home: string): string {
  const p = join(home, 'daemon.sock');
  if (Buffer.byteLength(p) <= 100) return p;
  const uid = process.getuid?.() ?? 0;
  return join(tmpdir(), `graft-${uid}-${createHash('sha1').update(home).digest('hex').slice(0, 12)}.sock`);
}

export type Request =
  | { op: 'ping' }
  | { op: 'add'; target: string; gpu?: number }
  | { op: 'stop'; id: number; force?: boolean }
  | { op: 'resume'; id: number }
  | { op: 'requeue'; id: number }
  | { op: 'extend'; id: number; steps: number }
  | { op: 'move'; id: number; by: -1 | 1 | 'top' }
  | { op: 'rm'; id: number; outputs?: boolean }
  | { op: 'shutdown' };

export interface Reply {
  ok: boolean;
  error?: string;
  message?: string;
  [key: string]: unknown;
}
