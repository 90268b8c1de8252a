// The queue daemon against the real trainer (tiny model): jobs on one slot run in order, stop saves and
// resume continues, a daemon killed with SIGKILL loses nothing and runs nothing twice, failures keep their
// last error line, a config.yaml is prepared before it trains. The daemon is the built dist/ (a separate, detached process), in a temporary GRAFT_HOME.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDaemon, ping, request } from '../src/daemon/client.js';
import { isAlive } from '../src/daemon/proc.js';
import { socketPath } from '../src/daemon/socket.js';
import { CLI, lab, requireBuilt, until, type Lab } from './helpers/daemon.js';
import { tempDir, tinyJobYaml, writeImage } from './helpers/dataset.js';

let L: Lab;
beforeAll(() => { requireBuilt(); L = lab(); });
afterAll(() => L?.cleanup());

const send = (req: Parameters<typeof request>[1]) => request(L.home, req, L.env);
const lastStep = (dir: string) => L.events(dir).filter((e) => e.event === 'step').at(-1)?.step ?? 0;
const graft = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { env: L.env, encoding: 'utf8', timeout: 90_000 });

describe('queue daemon', () => {
  it('starts on demand, detached, with its socket 0600; a second start finds the first', async () => {
    const first = await ensureDaemon(L.home, L.env);
    expect(first.ok).toBe(true);
    expect(statSync(socketPath(L.home)).mode & 0o777).toBe(0o600);
    expect(statSync(L.home).mode & 0o777).toBe(0o700);
    const again = await ensureDaemon(L.home, L.env);
    expect(again.pid).toBe(first.pid);
    expect(L.daemonPid()).toBe(first.pid);
    expect(first.slots).toEqual(['cpu']); // no GPU on the test machine: one CPU slot
  });

  it('runs two jobs on one slot in order, logs the pty stream and records exit code 0', async () => {
    const a = L.tinyJob(16, 8);
    const b = L.tinyJob(12, 1000);
    const ra = await send({ op: 'add', target: a });
    const rb = await send({ op: 'add', target: b });
    expect(ra.ok && rb.ok, `${ra.error} ${rb.error}`).toBe(true);
    const ida = (ra.job as { id: number }).id, idb = (rb.job as { id: number }).id;
    await until('job A running', () => L.job(ida).state === 'running');
    expect(L.job(idb).state).toBe('queued'); // one slot: B waits
    await until('both finished', () => L.job(idb).state === 'finished' || L.job(idb).state === 'failed');
    const ja = L.job(ida), jb = L.job(idb);
    expect([ja.state, jb.state, ja.exit_code, jb.exit_code]).toEqual(['finished', 'finished', 0, 0]);
    // B started only after A ended.
    const aEnd = L.events(a).find((e) => e.event === 'end').time;
    const bStart = L.events(b).find((e) => e.event === 'start').time;
    expect(bStart).toBeGreaterThanOrEqual(aEnd);
    const log = readFileSync(join(a, 'log.txt'), 'utf8');
    expect(log).toContain('step 16/16');
    expect(log).toContain(`finished: ${join(a, 'tiny.safetensors')}`);
    expect(log).toMatch(/CUDA_VISIBLE_DEVICES=/);
    expect(existsSync(join(a, 'tiny_000000008.safetensors'))).toBe(true);
  });

  it('stop saves a checkpoint, resume continues from it to the end', async () => {
    const dir = L.tinyJob(60, 1000);
    const id = ((await send({ op: 'add', target: dir })).job as { id: number }).id;
    await until('step 6', () => lastStep(dir) >= 6);
    const stop = await send({ op: 'stop', id });
    expect(stop.ok).toBe(true);
    await until('stopped', () => L.job(id).state === 'stopped');
    const end = L.events(dir).at(-1);
    expect(end).toMatchObject({ event: 'end', status: 'stopped' });
    const k = end.step as number;
    expect(k).toBeLessThan(60);
    expect(L.job(id).exit_code).toBe(130);
    expect(existsSync(join(dir, `tiny_${String(k).padStart(9, '0')}.safetensors`))).toBe(true);

    expect((await send({ op: 'resume', id })).ok).toBe(true);
    await until('finished', () => L.job(id).state === 'finished');
    const starts = L.events(dir).filter((e) => e.event === 'start');
    expect(starts.map((s) => [s.resumed, s.step])).toEqual([[false, 0], [true, k]]);
    expect(L.events(dir).filter((e) => e.event === 'step').map((e) => e.step).filter((s) => s > k)[0]).toBe(k + 1);
    expect(L.job(id).runs).toBe(2);
  });

  it('SIGKILL of the daemon mid-job loses nothing: the next call re-adopts the trainer, the queued job runs after it, nothing runs twice', async () => {
    const x = L.tinyJob(2000, 1000); // long enough to outlive the restart; stopped below
    const y = L.tinyJob(10, 1000);
    const idx = ((await send({ op: 'add', target: x })).job as { id: number }).id;
    const idy = ((await send({ op: 'add', target: y })).job as { id: number }).id;
    await until('step 4 of X', () => lastStep(x) >= 4);
    const daemon = L.daemonPid()!;
    const trainer = L.job(idx).pid!;
    process.kill(daemon, 'SIGKILL');
    await until('daemon gone', () => !isAlive(daemon, null));
    expect(await ping(L.home)).toBeUndefined();
    const s1 = lastStep(x);
    await until('training goes on without a daemon', () => lastStep(x) > s1 + 2);
    expect(isAlive(trainer, null)).toBe(true);

    const p = await ensureDaemon(L.home, L.env); // what the next TUI or CLI call does
    expect(p.pid).not.toBe(daemon);
    expect(p.running).toEqual([expect.objectContaining({ id: idx, pid: trainer, adopted: true })]);
    expect(L.job(idy).state).toBe('queued');
    // The re-adopted trainer is stopped like any other: it saves, then the queued job runs.
    expect((await send({ op: 'stop', id: idx })).ok).toBe(true);
    await until('Y finished', () => L.job(idy).state === 'finished', 90_000);
    expect(L.job(idx).state).toBe('stopped');
    const end = L.events(x).at(-1);
    expect(end).toMatchObject({ event: 'end', status: 'stopped' });
    expect(existsSync(join(x, `tiny_${String(end.step).padStart(9, '0')}.safetensors`))).toBe(true);
    expect(L.events(x).filter((e) => e.event === 'start')).toHaveLength(1);
    expect(L.events(y).filter((e) => e.event === 'start')).toHaveLength(1);
    expect([L.job(idx).runs, L.job(idy).runs]).toEqual([1, 1]);
    expect(readFileSync(join(x, 'log.txt'), 'utf8')).toContain(`re-adopted the running trainer (pid ${trainer})`);
  });

  it('a trainer that dies while the daemon is down is marked failed with the reason, and resumes on request', async () => {
    const dir = L.tinyJob(30, 5);
    const id = ((await send({ op: 'add', target: dir })).job as { id: number }).id;
    await until('step 6', () => lastStep(dir) >= 6);
    const trainer = L.job(id).pid!;
    process.kill(L.daemonPid()!, 'SIGKILL');
    process.kill(trainer, 'SIGKILL');
    await until('trainer gone', () => !isAlive(trainer, null));
    await ensureDaemon(L.home, L.env);
    const j = L.job(id);
    expect(j.state).toBe('failed');
    expect(j.last_error).toContain(`the trainer (pid ${trainer}) ended while the daemon was down`);
    expect((await send({ op: 'resume', id })).ok).toBe(true);
    await until('finished', () => L.job(id).state === 'finished');
    expect(L.events(dir).filter((e) => e.event === 'start').at(-1).resumed).toBe(true);
  });

  it('a failing trainer leaves state failed, its exit code and the last error line', async () => {
    const dir = L.tinyJob(10, 1000, (j) => { j.train.batch_size = 'two'; });
    const id = ((await send({ op: 'add', target: dir })).job as { id: number }).id;
    await until('failed', () => L.job(id).state === 'failed');
    expect(L.job(id).exit_code).toBe(1);
    expect(L.job(id).last_error).toContain('train.batch_size must be an integer');
  });

  it('a config.yaml of a tiny dataset runs as two stages: prepare writes job.json, then the trainer trains on it', async () => {
    const root = tempDir('graft-daemon-prep-');
    try {
      const data = join(root, 'data');
      mkdirSync(data);
      for (let i = 0; i < 4; i++) {
        await writeImage(join(data, `${i}.png`), { width: 40, height: 32, left: [60 * i, 20, 20] });
        writeFileSync(join(data, `${i}.txt`), `a picture ${i}`);
      }
      const config = join(root, 'my_job.yaml');
      writeFileSync(config, tinyJobYaml({ name: 'prep', trainingFolder: join(root, 'out'), datasets: [{ folder_path: data }], trigger: 'zxq', train: { steps: 2 } }));
      const r = await send({ op: 'add', target: config });
      expect(r.ok, r.error).toBe(true);
      const id = (r.job as { id: number }).id;
      const dir = join(root, 'out', 'prep');
      expect(L.job(id).job_dir).toBe(dir);
      await until('job.json written by the prepare stage', () => existsSync(join(dir, 'job.json')), 60_000);
      await until('the run ended', () => ['finished', 'failed'].includes(L.job(id).state), 120_000);
      const log = readFileSync(join(dir, 'log.txt'), 'utf8');
      expect(log).toMatch(/stage prepare, .*cli\.js prepare /);
      expect(log).toContain('prepared 4 images into 4 items');
      expect(log).toContain('=== graft: prepare ended (exit code 0)');
      expect(log).toMatch(/stage train, .*graft-trainer train /);
      const job = JSON.parse(readFileSync(join(dir, 'job.json'), 'utf8'));
      expect(job.datasets[0].items).toHaveLength(4);
      expect(readFileSync(join(dir, 'config.yaml'), 'utf8')).toContain(`# graft: copied from ${config}`);
      expect(L.job(id).state, L.job(id).last_error ?? '').toBe('finished');
      expect(existsSync(join(dir, 'prep.safetensors'))).toBe(true);

      // graft run does the same in the foreground: prepare (everything reused), then train.
      const other = join(root, 'other.yaml');
      writeFileSync(other, readFileSync(config, 'utf8').replace('"name": "prep"', '"name": "prep_run"'));
      const fg = graft('run', other);
      expect(fg.status, fg.stderr).toBe(0);
      expect(fg.stdout).toContain('prepared 4 images into 4 items');
      expect(fg.stdout).toContain(`graft: finished prep_run: ${join(root, 'out', 'prep_run')}`);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('refuses a config.yaml that does not validate, and a folder that is not a job folder, in one line', async () => {
    const root = tempDir('graft-daemon-bad-');
    try {
      const bad = join(root, 'bad.yaml');
      writeFileSync(bad, 'job: extension\nconfig:\n  name: x\n');
      const r = await send({ op: 'add', target: bad });
      expect(r.ok).toBe(false);
      expect(r.error).toContain(`${bad}: config.process: must be a list with one trainer process`);
      const cli = graft('run', bad);
      expect(cli.status).toBe(1);
      expect(cli.stderr).toContain('config.process: must be a list with one trainer process');
      expect((await send({ op: 'add', target: root })).error).toBe(`${root} has neither config.yaml nor job.json: not a job folder`);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('graft run trains in the foreground and exits 0 only on success; queue commands work from the CLI', () => {
    const good = L.tinyJob(6);
    const ok = graft('run', good);
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stdout).toContain('step 6/6');
    const bad = L.tinyJob(6, 1000, (j) => { j.train.lr = 'fast'; });
    const fail = graft('run', bad);
    expect(fail.status).toBe(1);
    expect(fail.stderr).toContain('train.lr');

    // Far more steps than the test needs: a short job could finish (under load, while the CLI calls
    // below start) before it is stopped, and stopping a finished job is rightly refused.
    const queued = L.tinyJob(1_000_000, 1_000_000);
    expect(graft('queue', 'add', queued).status).toBe(0);
    const ls = graft('queue', 'ls');
    expect(ls.stdout).toMatch(new RegExp(`(running|queued)\\s+cpu\\s+\\d+.*${queued.replace(/[/]/g, '\\/')}`));
    const json = JSON.parse(graft('queue', 'ls', '--json').stdout) as { id: number; state: string; slot: string; job_dir: string }[];
    expect(json.find((j) => j.job_dir === queued)).toMatchObject({ slot: 'cpu' });
    const status = JSON.parse(graft('daemon', 'status', '--json').stdout) as { running: boolean; slots: unknown[] };
    expect(status).toMatchObject({ running: true, slots: ['cpu'] });
    // A GPU this machine does not have is refused, with what it has.
    const gpu3 = graft('queue', 'add', L.tinyJob(6), '--gpu', '3');
    expect(gpu3.status).toBe(1);
    expect(gpu3.stderr).toContain('--gpu 3: no GPU 3: this machine has no GPU (jobs run in its CPU slot); leave --gpu out');
    // The same folder cannot also run in the foreground: it would run twice.
    const twice = graft('run', queued);
    expect(twice.status).toBe(1);
    expect(twice.stderr).toContain('stop it there first');
    const id = L.jobs().find((j) => j.job_dir === queued)!.id;
    expect(graft('queue', 'stop', String(id), '--force').status).toBe(0);
    const rm = graft('queue', 'rm', String(id));
    expect(rm.status).toBe(2); // no terminal to ask: needs --yes
    expect(rm.stderr).toContain('--yes');
  });

  it('a finished job is extended: its steps raised, it resumes from its last state and trains on', async () => {
    const dir = L.tinyJob(6, 3);
    const r = await send({ op: 'add', target: dir });
    const id = (r.job as { id: number }).id;
    await until('finished', () => L.job(id).state === 'finished');
    expect(graft('queue', 'resume', String(id)).stderr).toContain(`has finished at step 6: raise its steps to train on (graft queue extend ${id} --steps 12`);
    expect(graft('queue', 'extend', String(id), '--steps', '4').stderr).toContain(`--steps 4: job ${id} has trained 6 steps; give more than that`);
    const ext = graft('queue', 'extend', String(id), '--steps', '10');
    expect(ext.status, ext.stderr).toBe(0);
    expect(ext.stdout).toContain(`job ${id}: train.steps 10 written to ${join(dir, 'job.json')}`);
    await until('finished again', () => L.job(id).state === 'finished' && lastStep(dir) === 10, 90_000);
    const starts = L.events(dir).filter((e) => e.event === 'start');
    expect(starts.map((e) => e.step)).toEqual([0, 6]); // the second run resumed at step 6
    expect(existsSync(join(dir, 'tiny.safetensors'))).toBe(true);
  });

  it('leaves on its own when its home is deleted or it has been idle, so no daemon outlives what it served', async () => {
    const other = lab('graft-daemon-gone-');
    try {
      const a = await ensureDaemon(other.home, other.env);
      const { rmSync } = await import('node:fs');
      rmSync(other.home, { recursive: true, force: true });
      await until('daemon gone with its home', () => !isAlive(Number(a.pid), null), 10_000);
      const idle = lab('graft-daemon-idle-');
      try {
        const b = await ensureDaemon(idle.home, { ...idle.env, GRAFT_DAEMON_IDLE_S: '1' });
        await until('idle daemon gone', () => !isAlive(Number(b.pid), null), 10_000);
      } finally { idle.cleanup(); }
    } finally { other.cleanup(); }
  });
});
