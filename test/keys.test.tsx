// Keys that arrive in one read (an SSH link, key repeat, a paste) are applied one after another, each to
// the screen the previous one left: every screen, through the real input path (one stdin write holding
// several keys -> KeyFeed -> Ink -> the screens), read back from the terminal the TUI draws.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { App } from '../screens/App.js';
import type { Request } from '../src/daemon/socket.js';
import { newJobDoc } from '../src/config/document.js';
import { splitKeys } from '../src/tui/keys.js';
import { Queue as Rules } from '../src/queue/queue.js';
import { writeImage } from './helpers/dataset.js';
import { KEY, testEnv, type Env } from './helpers/ink.js';
import { startTui, type TuiHarness } from './helpers/tui.js';

let env: Env;
let t: TuiHarness | undefined;
beforeEach(() => { env = testEnv(); });
afterEach(() => { t?.unmount(); t = undefined; env.cleanup(); });

const noGpu = { gpus: null, gpuError: 'nvidia-smi not found', cpuPct: 5, cores: 2, memUsedMb: 1024, memTotalMb: 8192 };

function stub() {
  const sent: Request[] = [];
  return { sent, client: { ensure: async () => ({ ok: true, pid: 1, slots: ['cpu'] }), send: async (req: Request) => { sent.push(req); return { ok: true, message: `did ${req.op}` }; } } };
}

function jobDir(name: string): string {
  const dir = join(env.home, 'jobs', name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'job.json'), JSON.stringify({ name }));
  writeFileSync(join(dir, 'metrics.jsonl'), `${JSON.stringify({ event: 'start', step: 0, steps: 10 })}\n`);
  return dir;
}

async function app(props: Partial<Parameters<typeof App>[0]> = {}, columns = 100, rows = 30) {
  t = await startTui(<App store={env.store} presets={env.presets} gpus={[]} system={noGpu} size={{ columns, rows }} {...props} />, columns, rows);
  return t;
}

/** The row of a form field, label and value, as drawn. */
const field = (s: string, label: string) => s.split('\n').find((l) => l.includes(` ${label} `)) ?? '';

describe('splitting a read into keys', () => {
  it('cuts text into characters and keeps escape sequences whole', () => {
    expect(splitKeys(`jjj`).keys).toEqual(['j', 'j', 'j']);
    expect(splitKeys(`${KEY.down}\rX`).keys).toEqual([KEY.down, '\r', 'X']);
    expect(splitKeys(`${KEY.up}${KEY.up}${KEY.pageDown}\u001B[1;5C`).keys).toEqual([KEY.up, KEY.up, KEY.pageDown, '\u001B[1;5C']);
    expect(splitKeys('\u001BOA\u001Bx\u001B\u001B[A').keys).toEqual(['\u001BOA', '\u001Bx', '\u001B\u001B[A']); // SS3 arrow, Alt+x, Alt+Up
    expect(splitKeys('a\u{1F600}b').keys).toEqual(['a', '\u{1F600}', 'b']);
    expect(splitKeys(`q${KEY.down.slice(0, 2)}`)).toEqual({ keys: ['q'], rest: '\u001B[' }); // the rest comes in the next read
  });
});

describe('New Job at 80x24', () => {
  it('never pushes the tab bar off the top, on any field of any family', async () => {
    const flux = { path: '/tmp/flux.yaml', doc: newJobDoc(env.presets.find((p) => p.family === 'wan22_14b_t2v')!, 'output'), ignored: [] };
    const h = await app({ initial: flux, initialScreen: 'new' }, 80, 24);
    await h.waitFor((s) => s.includes('Training Name'), 'New Job');
    for (let i = 0; i < 90; i++) {
      h.type('j');
      const s = await h.settled(60);
      expect(s.split('\n')[0], `after ${i + 1} moves:\n${s}`).toMatch(/^ graft │ 1 Dashboard/);
    }
  });
});

describe('the Job monitor', () => {
  async function jobWithSamples(state: string) {
    const dir = jobDir('s');
    mkdirSync(join(dir, 'samples'));
    for (const [step, p] of [[0, 0], [0, 1], [10, 0], [10, 1]] as const) await writeImage(join(dir, 'samples', `${String(step).padStart(9, '0')}_${p}.png`), { width: 32, height: 32, left: [200, 0, 0], right: [0, 0, 200] });
    writeFileSync(join(dir, 'job.json'), JSON.stringify({ name: 's', sample: { prompts: [{ prompt: 'a red zxq', seed: 42, width: 32, height: 32 }, { prompt: 'a blue circle', seed: 43, width: 32, height: 32 }] } }));
    const lines = [{ event: 'start', step: 0, steps: 20 }, ...Array.from({ length: 10 }, (_, i) => ({ event: 'step', step: i + 1, steps: 20, loss: 0.5 - i * 0.01, lr: 1e-3, s_per_step: 0.2 }))];
    writeFileSync(join(dir, 'metrics.jsonl'), `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`);
    const job = new Rules(env.store).add({ jobDir: dir, configPath: join(dir, 'job.json'), name: 's' });
    env.store.db.prepare('UPDATE jobs SET state = ? WHERE id = ?').run(state, job.id);
    return job;
  }

  it('at 80x24, s switches between the chart and the samples; Enter opens one large, arrows walk steps and prompts', async () => {
    const job = await jobWithSamples('running');
    const h = await app({ initialScreen: 'job', initialJob: job.id }, 80, 24);
    await h.waitFor((s) => s.includes('loss linear (l)'), 'the chart');
    h.type('s');
    await h.waitFor((s) => s.includes('step 10 (2/2) · prompt 2/2 · seed 43 · 32x32 px') && s.includes('"a blue circle"') && s.includes('▄'), 'the newest sample, drawn');
    h.type('s');
    await h.waitFor((s) => s.includes('loss linear (l)'), 'the chart again');
    h.type(KEY.enter);
    await h.waitFor((s) => s.includes('←→  step') && s.includes('prompt 2/2') && s.includes('▄'), 'the sample large');
    h.type(`${KEY.left}${KEY.up}`);
    await h.waitFor((s) => s.includes('step 0 (1/2) · prompt 1/2 · seed 42') && s.includes('"a red zxq"'), 'an earlier step, the other prompt');
    h.type(KEY.escape);
    await h.waitFor((s) => s.includes('loss linear (l)'), 'back to the monitor');
  });

  it('at 120x36 the samples sit beside the chart', async () => {
    const job = await jobWithSamples('finished');
    const h = await app({ initialScreen: 'job', initialJob: job.id }, 120, 36);
    const s = await h.waitFor((x) => x.includes('Samples (4)') && x.includes('"a blue circle"'), 'samples beside the chart');
    const row = s.split('\n').find((l) => l.includes('Samples (4)'))!;
    expect(row).toMatch(/┤.*Samples \(4\)/); // the same rows as the chart
  });
});

describe('quitting', () => {
  it('asks first when New Job has unsaved edits: any other key stays, y quits; without edits q quits at once', async () => {
    const h = await app({ initialScreen: 'new' });
    await h.waitFor((s) => s.includes('Training Name'), 'New Job');
    h.type(`${KEY.enter}${KEY.ctrlU}edited${KEY.enter}`);
    await h.waitFor((s) => s.includes('new job (unsaved)'), 'an unsaved edit');
    h.type('\u0003'); // Ctrl+C
    await h.waitFor((s) => s.includes('New Job has unsaved edits') && s.includes('y: quit without saving'), 'the question');
    h.type('n');
    await h.waitFor((s) => s.includes('Training Name') && !s.includes('unsaved edits.'), 'back in the form');
    h.type('1q');
    await h.waitFor((s) => s.includes('New Job has unsaved edits'), 'asked again from the Dashboard');
    h.type('y');
    await h.tui.app.waitUntilExit();
    t = undefined;
    const clean = await app();
    clean.type('q');
    await clean.tui.app.waitUntilExit();
    t = undefined;
  });
});

describe('a failed job at 80 columns', () => {
  it('shows its whole reason on the Dashboard, the Queue and the monitor, and no stale answer of an earlier action', async () => {
    const rules = new Rules(env.store);
    const job = rules.add({ jobDir: jobDir('f'), configPath: join(env.home, 'jobs', 'f', 'job.json'), name: 'f' });
    const reason = 'CUDA out of memory while sampling at step 120: lower the sample size and steps, then the resolution buckets, the rank, or turn on Low VRAM';
    rules.finish(job.id, 'failed', 1, reason);
    const s = stub();
    const h = await app({ daemon: s.client }, 80, 24);
    const flatScreen = (x: string) => x.replace(/\s+/g, ' ');
    await h.waitFor((x) => flatScreen(x).includes(`job ${job.id} failed: ${reason}`), 'the reason on the Dashboard');
    h.type('3');
    await h.waitFor((x) => flatScreen(x).includes(`job ${job.id} failed: ${reason}`), 'the reason in the Queue');
    h.type('r');
    await h.waitFor((x) => x.includes('did resume'), 'the answer');
    // The job runs and fails again: the answer to r goes, the new reason shows.
    env.store.db.prepare("UPDATE jobs SET state = 'running' WHERE id = ?").run(job.id);
    await h.waitFor((x) => !x.includes('did resume'), 'the answer gone once the state moved on');
    rules.finish(job.id, 'failed', 1, 'the second run failed too');
    await h.waitFor((x) => x.includes(`job ${job.id} failed: the second run failed too`), 'the new reason');
    h.type(`${KEY.enter}`);
    await h.waitFor((x) => flatScreen(x).includes('failed: the second run failed too'), 'the reason in the monitor');
  });
});

describe('several keys in one read, on every screen', () => {
  it('New Job: Down Enter text Enter edits the field the cursor shows; jjj moves three fields; Up Up comes back', async () => {
    const h = await app({ initialScreen: 'new' });
    await h.waitFor((s) => s.includes('Training Name'), 'New Job');
    h.type(`${KEY.down}${KEY.enter}${KEY.ctrlU}7${KEY.enter}`);
    let s = await h.waitFor((x) => /GPU ID\s+7\b/.test(x), 'GPU ID 7');
    expect(field(s, 'Training Name')).toMatch(/my_lora_v1/);
    h.type(`${KEY.down}${KEY.enter}zxq${KEY.enter}`); // a trigger word lands in Trigger Word
    s = await h.waitFor((x) => /Trigger Word\s+zxq/.test(x), 'trigger word');
    expect(field(s, 'GPU ID')).toMatch(/GPU ID\s+7\b/);
    h.type('jjj');
    s = await h.waitFor((x) => x.includes('Name or Path: '), 'the help line of the third field down');
    h.type(`${KEY.up}${KEY.up}`);
    await h.waitFor((x) => x.includes('Training Folder: '), 'two up');
  });

  it('the frame: a screen key and the keys after it reach the new screen', async () => {
    const h = await app();
    await h.waitFor((s) => s.includes('Jobs: 0'), 'Dashboard');
    h.type(`2jj${KEY.enter}abc${KEY.enter}`);
    await h.waitFor((s) => /Trigger Word\s+abc/.test(s), 'trigger word typed on New Job');
    h.type('?x4');
    await h.waitFor((s) => s.includes('DATASETS') && s.includes('press a to add'), 'help closed by x, then Datasets');
  });

  it('Dashboard and Training Queue: jj then a key act on the third job', async () => {
    const rules = new Rules(env.store);
    const ids = ['a', 'b', 'c'].map((n) => rules.add({ jobDir: jobDir(n), configPath: join(env.home, 'jobs', n, 'job.json'), name: n }).id);
    const s = stub();
    const h = await app({ daemon: s.client, initialScreen: 'queue' });
    await h.waitFor((x) => x.includes('CPU slot'), 'the queue');
    h.type('jjx');
    await h.waitFor((x) => x.includes('did stop'), 'stop sent');
    expect(s.sent).toEqual([{ op: 'stop', id: ids[2] }]);
    h.type('1jj\r');
    await h.waitFor((x) => x.includes(`job ${ids[2]} ·`) && x.includes('c  job'), 'the monitor of the third job');
  });

  it('Datasets: jjg marks the third dataset as regularization', async () => {
    for (const n of ['one', 'two', 'three']) {
      const folder = join(env.home, n);
      mkdirSync(folder);
      env.store.addDataset(n, folder);
    }
    const h = await app({ initialScreen: 'datasets' });
    await h.waitFor((x) => x.includes('three'), 'the list');
    h.type('jjg');
    await h.waitFor((x) => x.includes('two: now a regularization dataset'), 'the third in name order is "two"');
  });

  it('Job monitor: l then x in one read switch the scale and send stop', async () => {
    const rules = new Rules(env.store);
    const job = rules.add({ jobDir: jobDir('m'), configPath: join(env.home, 'jobs', 'm', 'job.json'), name: 'm' });
    env.store.db.prepare("UPDATE jobs SET state = 'running' WHERE id = ?").run(job.id);
    const s = stub();
    const h = await app({ daemon: s.client, initialScreen: 'job', initialJob: job.id });
    await h.waitFor((x) => x.includes('loss linear (l)'), 'monitor');
    h.type('lx');
    await h.waitFor((x) => x.includes('loss log (l)') && x.includes('did stop'), 'both keys');
    expect(s.sent).toEqual([{ op: 'stop', id: job.id }]);
  });
});
