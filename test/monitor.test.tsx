// The Job monitor, Dashboard and Training Queue rendered with ink-testing-library from a job folder written
// by hand (metrics.jsonl, LoRA files, log.txt), with a stub daemon that records the requests it gets.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { render } from 'ink-testing-library';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { App } from '../screens/App.js';
import type { Request } from '../src/daemon/socket.js';
import { chartText, lossChart } from '../src/monitor/chart.js';
import { readMetrics, smooth } from '../src/monitor/metrics.js';
import { cpuBusyPct } from '../src/monitor/system.js';
import { Queue as Rules } from '../src/queue/queue.js';
import { flat, KEY, press, settle, testEnv, waitFor, type Env } from './helpers/ink.js';

let env: Env;
beforeEach(() => { env = testEnv(); });
afterEach(() => env.cleanup());

const noGpu = { gpus: null, gpuError: 'nvidia-smi not found', cpuPct: 42, cores: 2, memUsedMb: 2048, memTotalMb: 8192 };

function jobFolder(name: string, steps: number, done: number, end?: string, extra: object = {}): string {
  const dir = join(env.home, 'jobs', name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'job.json'), JSON.stringify({ name: 'tiny' }));
  const ev: object[] = [{ event: 'start', step: 0, steps, device: 'cpu (2 threads)' }];
  for (let s = 1; s <= done; s++) ev.push({ event: 'step', step: s, steps, loss: 3 * Math.exp(-s / 10) + 0.5, lr: 5e-3, s_per_step: 0.25, grad_norm: 0.4, epoch: s, ...extra });
  if (done >= 10) ev.push({ event: 'checkpoint', step: 10, file: join(dir, 'tiny_000000010.safetensors'), bytes: 443056 });
  if (end) ev.push({ event: 'end', status: end, step: done });
  writeFileSync(join(dir, 'metrics.jsonl'), `${ev.map((e) => JSON.stringify(e)).join('\n')}\n`);
  if (done >= 10) writeFileSync(join(dir, 'tiny_000000010.safetensors'), Buffer.alloc(443056));
  writeFileSync(join(dir, 'log.txt'), `graft-trainer: training 'tiny'\nstep 1/${steps}  loss 2.9\rstep ${done}/${steps}  loss 1.2\x1b[K\n`);
  return dir;
}

function stub() {
  const sent: Request[] = [];
  return {
    sent,
    client: {
      ensure: async () => ({ ok: true, pid: 4242, slots: ['cpu'] }),
      send: async (req: Request) => { sent.push(req); return { ok: true, message: `did ${req.op}` }; },
    },
  };
}

function queueJob(dir: string) {
  const rules = new Rules(env.store);
  return rules.add({ jobDir: dir, configPath: join(dir, 'job.json'), name: 'tiny' });
}

describe('Job monitor', () => {
  it('shows progress, ETA, the loss chart, lr and s/step, no-GPU panel, checkpoints with full paths and the log tail', async () => {
    const dir = jobFolder('a', 40, 20);
    const job = queueJob(dir);
    env.store.db.prepare("UPDATE jobs SET state = 'running', runs = 1 WHERE id = ?").run(job.id);
    const s = stub();
    const r = render(<App store={env.store} presets={env.presets} gpus={[]} size={{ columns: 80, rows: 24 }} daemon={s.client} system={noGpu} initialScreen="job" initialJob={job.id} />);
    await settle();
    const f = await waitFor(r.lastFrame, (x) => x.includes('step 20/40'));
    expect(f).toContain('running');
    expect(f).toMatch(/step 20\/40 50% · ETA 5s/);
    expect(f).toMatch(/[\u2801-\u28ff]/); // braille dots of the chart
    expect(f).toContain('lr 5.0e-3 · 0.250 s/step');
    expect(f).toContain('no GPU (nvidia-smi not found) · CPU 42% of 2 cores · RAM 2.0/8.0 GiB');
    expect(f).toContain(join(dir, 'tiny_000000010.safetensors'));
    expect(f).toContain('433 KiB');
    expect(f).toContain('samples: none yet');
    expect(f).toContain('step 20/40  loss 1.2'); // the \r-overwritten progress line as a terminal shows it
    expect(f.split('\n').length).toBeLessThanOrEqual(24);
    await press(r, 'l');
    expect(r.lastFrame()).toContain('loss log (l)');
    await press(r, 'x');
    await waitFor(r.lastFrame, (x) => x.includes('did stop'));
    expect(s.sent).toEqual([{ op: 'stop', id: job.id }]);
    await press(r, 'X');
    expect(flat(r.lastFrame())).toContain('Force-stop job');
    await press(r, 'y');
    await waitFor(r.lastFrame, (x) => x.includes('did stop'));
    expect(s.sent[1]).toEqual({ op: 'stop', id: job.id, force: true });
    r.unmount();
  });

  it('uses the wide layout at 160x48 with the GPU panel from nvidia-smi (and the DOP drift of a job that reports it)', async () => {
    const dir = jobFolder('b', 40, 40, 'finished', { preservation_loss: 0.0123, vram_mb: 16100 });
    // The trainer's memory plan, beside what the steps measured.
    const mp = join(dir, 'metrics.jsonl');
    writeFileSync(mp, `${readFileSync(mp, 'utf8')}${JSON.stringify({ event: 'memory_plan', step: 0, plan: { total: 15.5 * 2 ** 30, available: 139 * 2 ** 30 } })}\n`);
    const job = queueJob(dir);
    env.store.db.prepare("UPDATE jobs SET state = 'finished', exit_code = 0 WHERE id = ?").run(job.id);
    const gpu = { gpus: [{ index: 0, name: 'NVIDIA H200', memUsedMb: 17850, memTotalMb: 143771, utilPct: 97, tempC: 61, powerW: 512, powerLimitW: 700 }], cpuPct: 10, cores: 16, memUsedMb: 1e4, memTotalMb: 1.3e5 };
    const r = render(<App store={env.store} presets={env.presets} gpus={[]} size={{ columns: 160, rows: 48 }} daemon={stub().client} system={gpu} initialScreen="job" initialJob={job.id} />);
    await settle();
    const f = await waitFor(r.lastFrame, (x) => x.includes('step 40/40'));
    expect(f).toContain('finished');
    expect(f).toContain('GPU 0 NVIDIA H200');
    expect(f).toMatch(/VRAM \[█+.*\] 17\.4\/140 GiB/);
    expect(f).toContain('util 97% · 61°C · 512/700 W');
    expect(f).toContain('Samples (0)');
    expect(f).toContain('grad norm 0.400 · preservation 0.012 · epoch 40 · VRAM 16100 MB (pla');  // the line is cut there at 160
    expect(readMetrics(mp).plan).toEqual({ total: 15.5 * 2 ** 30, available: 139 * 2 ** 30 });
    expect(f.split('\n').length).toBeLessThanOrEqual(48);
    r.unmount();
  });
});

describe('Training Queue and Dashboard', () => {
  it('lists each slot in order and sends every action to the daemon; delete asks and removes outputs only when told', async () => {
    const a = queueJob(jobFolder('a', 40, 5));
    const b = queueJob(jobFolder('b', 40, 0));
    const s = stub();
    const r = render(<App store={env.store} presets={env.presets} gpus={[]} size={{ columns: 100, rows: 30 }} daemon={s.client} system={noGpu} initialScreen="queue" />);
    await settle();
    const f = await waitFor(r.lastFrame, (x) => x.includes('CPU slot'));
    expect(f).toMatch(new RegExp(`1\\s+${a.id}\\s+queued[\\s\\S]*2\\s+${b.id}\\s+queued`));
    await press(r, KEY.down, 'K');
    await press(r, 'T', 'x', 'r', 'R', 's');
    await press(r, 'd');
    expect(flat(r.lastFrame())).toContain(`Delete job ${b.id} 'tiny'? y: yes, keep files · o: also delete 2 output file(s) · other: no`);
    await press(r, 'n');
    expect(r.lastFrame()).toContain('nothing deleted');
    await press(r, 'd', 'o');
    await waitFor(r.lastFrame, (x) => x.includes('did rm'));
    expect(s.sent).toEqual([
      { op: 'move', id: b.id, by: -1 }, { op: 'move', id: b.id, by: 'top' }, { op: 'stop', id: b.id }, { op: 'resume', id: b.id },
      { op: 'requeue', id: b.id }, { op: 'add', target: join(env.home, 'jobs', 'b') }, { op: 'rm', id: b.id, outputs: true },
    ]);
    await press(r, '1');
    const d = await waitFor(r.lastFrame, (x) => x.includes('daemon pid 4242'));
    expect(d).toMatch(new RegExp(`${a.id}\\s+queued\\s+cpu\\s+tiny\\s+\\[.*\\] 5/40`));
    await press(r, KEY.enter);
    await waitFor(r.lastFrame, (x) => x.includes('step 5/40'));
    r.unmount();
  });

  it('a draft (config.yaml without job.json) resolves to its job folder, prepared when it runs', async () => {
    const { newJobDoc, procPath } = await import('../src/config/document.js');
    const { saveJob } = await import('../src/config/jobfile.js');
    const { setAt } = await import('../src/util/objpath.js');
    const { writeImage } = await import('./helpers/dataset.js');
    const data = join(env.home, 'pictures');
    mkdirSync(data);
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    const tiny = env.presets.find((p) => p.family === 'graft_tiny')!;
    const saved = saveJob(setAt(newJobDoc(tiny, 'output', 'draft_one'), procPath('datasets', 0, 'folder_path'), data), env.presets, env.store);
    const { resolveJob } = await import('../src/queue/queue.js');
    const { dirname } = await import('node:path');
    // A job on the CPU (graft-tiny's device): no GPU index.
    expect(resolveJob(saved.configPath, env.home)).toEqual({ jobDir: dirname(saved.configPath), configPath: saved.configPath, name: 'draft_one', gpu: undefined });
    expect(resolveJob(dirname(saved.configPath), env.home).configPath).toBe(saved.configPath);
  });
});

describe('queue rules, metrics and chart', () => {
  it('orders, resumes at the front and requeues at the end; refuses what makes no sense', () => {
    const rules = new Rules(env.store);
    const ids = ['a', 'b', 'c'].map((n) => queueJob(jobFolder(n, 10, 0)).id);
    rules.move(ids[2]!, 'top');
    expect(rules.next('cpu')!.id).toBe(ids[2]);
    rules.requestStop(ids[2]!, false); // queued -> out of the queue
    expect(rules.get(ids[2]!).state).toBe('stopped');
    expect(rules.next('cpu')!.id).toBe(ids[0]);
    rules.resume(ids[2]!);
    expect(rules.next('cpu')!.id).toBe(ids[2]);
    expect(rules.claim(ids[2]!, 'train')).toBe(true);
    expect(rules.claim(ids[2]!, 'train')).toBe(false); // never twice
    expect(() => rules.remove(ids[2]!, false)).toThrow(/stop it first/);
    rules.finish(ids[2]!, 'finished', 0, null);
    expect(() => rules.requeue(ids[2]!)).toThrow(/has finished/);
    expect(() => rules.resume(ids[0]!)).toThrow(/only a stopped, failed or extended job resumes/);
  });

  it('reads metrics incrementally, drops steps a resumed run redoes, and draws both series', () => {
    const dir = jobFolder('m', 30, 12);
    writeFileSync(join(dir, 'metrics.jsonl'), `${readFileLines(dir)}{"event":"start","step":10,"steps":30}\n{"event":"step","step":11,"steps":30,"loss":0.7,"lr":0.005,"s_per_step":0.2}\n`);
    const m = readMetrics(join(dir, 'metrics.jsonl'));
    expect(m.points.map((p) => p.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(m.points.at(-1)!.loss).toBe(0.7);
    expect(m.runs).toBe(2);
    const raw = m.points.map((p) => p.loss);
    const lines = chartText(lossChart({ steps: m.points.map((p) => p.step), raw, smooth: smooth(raw) }, 20, 4));
    expect(lines).toHaveLength(4);
    expect(lines.every((l) => l.length === 20)).toBe(true);
    expect(lines[0]![0]).not.toBe(' '); // the first (highest) loss is at the top left
  });

  it('CPU load is the busy share of all cores between two readings of their times', () => {
    const core = (user: number, sys: number, idle: number) => ({ model: 'x', speed: 1, times: { user, nice: 0, sys, idle, irq: 0 } });
    // Core 0 busy 60 of 100 ms, core 1 busy 20 of 100 ms: 40% of the machine.
    expect(cpuBusyPct([core(100, 50, 1000), core(10, 0, 500)], [core(150, 60, 1040), core(30, 0, 580)])).toBeCloseTo(40, 10);
    expect(cpuBusyPct([core(1, 1, 1)], [core(1, 1, 1)])).toBeNull(); // no time passed
    // The live reading lies in [0, 100] and counts this machine's cores.
    const now = cpus();
    const later = now.map((c) => ({ ...c, times: { ...c.times, idle: c.times.idle + 10 } }));
    expect(cpuBusyPct(now, later)).toBe(0);
    expect(now.length).toBeGreaterThan(0);
  });
});

function readFileLines(dir: string): string {
  return readFileSync(join(dir, 'metrics.jsonl'), 'utf8');
}
