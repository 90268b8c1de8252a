// Talking to the daemon: one JSON request per connection on its socket. The daemon starts on demand,
// detached (its own session, output to <home>/daemon.log), so it outlives the TUI or CLI that started it.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';
import { socketPath, type Reply, type Request } from './socket.js';

export class DaemonError extends Error {}

function once(path: string, req: Request, timeoutMs: number): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const c = connect(path);
    let buf = '';
    const timer = setTimeout(() => { c.destroy(); reject(new DaemonError(`the daemon did not answer within ${timeoutMs} ms`)); }, timeoutMs);
    c.setEncoding('utf8');
    c.on('connect', () => c.write(`${JSON.stringify(req)}\n`));
    c.on('data', (d: string) => { buf += d; });
    c.on('error', (err) => { clearTimeout(timer); reject(err); });
    c.on('end', () => {
      clearTimeout(timer);
      try { resolve(JSON.parse(buf) as Reply); } catch { reject(new DaemonError(`the daemon answered nonsense: ${buf.slice(0, 200)}`)); }
    });
  });
}

/** The compiled CLI that runs `graft daemon run` ($GRAFT_CLI overrides, for tests). */
export function cliPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.GRAFT_CLI && env.GRAFT_CLI.trim() !== '' ? env.GRAFT_CLI : join(packageRoot(), 'dist', 'src', 'cli.js');
}

/** Start a daemon for this home, detached. Several callers may race: the daemons settle who serves in SQLite. */
export function spawnDaemon(home: string, env: NodeJS.ProcessEnv = process.env): void {
  const cli = cliPath(env);
  if (!existsSync(cli)) throw new DaemonError(`cannot start the queue daemon: ${cli} is missing (build graft: npx tsc -p tsconfig.json)`);
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const log = openSync(join(home, 'daemon.log'), 'a');
  try {
    const child = spawn(process.execPath, [cli, 'daemon', 'run'], {
      detached: true, stdio: ['ignore', log, log], cwd: home, env: { ...env, GRAFT_HOME: home },
    });
    child.unref();
  } finally {
    closeSync(log);
  }
}

/** Whether a daemon answers on this home's socket. */
export async function ping(home: string): Promise<Reply | undefined> {
  try { return await once(socketPath(home), { op: 'ping' }, 3000); } catch { return undefined; }
}

/** Make sure a daemon serves this home (starting one if none answers); its ping reply. */
export async function ensureDaemon(home: string, env: NodeJS.ProcessEnv = process.env, timeoutMs = 20_000): Promise<Reply> {
  const first = await ping(home);
  if (first) return first;
  spawnDaemon(home, env);
  const start = Date.now();
  for (;;) {
    await new Promise((r) => setTimeout(r, 100));
    const p = await ping(home);
    if (p) return p;
    if (Date.now() - start > timeoutMs) throw new DaemonError(`the queue daemon did not start within ${timeoutMs / 1000} s; see ${join(home, 'daemon.log')}`);
  }
}

/** Send a request, starting the daemon first if it is not running. Errors the daemon reports come back as ok: false. */
export async function request(home: string, req: Request, env: NodeJS.ProcessEnv = process.env): Promise<Reply> {
  await ensureDaemon(home, env);
  return once(socketPath(home), req, 30_000);
}
