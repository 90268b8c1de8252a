// What the TUI sends to the terminal: only the rows that changed, never a full clear after the first frame,
// and the screen that results is the frame Ink drew. Measured on the Job monitor at 170x50 while a job's
// metrics grow, as the training writes them.
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { App } from '../screens/App.js';
import { Queue as Rules } from '../src/queue/queue.js';
import { rowPatch } from '../src/tui/cells.js';
import { CLEAR_TERMINAL, ScreenWriter } from '../src/tui/screenWriter.js';
import { plain, testEnv, tick, type Env } from './helpers/ink.js';
import { startTui } from './helpers/tui.js';
import { VirtualScreen } from './helpers/vt.js';

let env: Env;
beforeEach(() => { env = testEnv(); });
afterEach(() => env.cleanup());

describe('ScreenWriter', () => {
  it('writes a first frame whole, then only the rows that differ, each erased and written at its place', () => {
    const out: string[] = [];
    const w = new ScreenWriter({ write: (s) => out.push(s) });
    w.write(`${CLEAR_TERMINAL}a\nb\nc`);
    expect(out).toEqual([`${CLEAR_TERMINAL}a\nb\nc`]);
    w.write(`${CLEAR_TERMINAL}a\nB\nc`);
    expect(out[1]).toBe('\u001B[2;1H\u001B[0mB\u001B[3;1H');
    w.write(`${CLEAR_TERMINAL}a\nB\nc`); // nothing changed: nothing written
    expect(out).toHaveLength(2);
    w.write('\u001B[?25l'); // a mode change leaves the screen as it was
    w.write(`${CLEAR_TERMINAL}a\nB\nC`);
    expect(out[3]).toBe('\u001B[3;1H\u001B[0mC\u001B[3;1H');
    w.write('something Ink wrote that is not a frame');
    w.write(`${CLEAR_TERMINAL}a\nB\nC`); // the screen is unknown now: whole again
    expect(out[5]).toBe(`${CLEAR_TERMINAL}a\nB\nC`);
  });

  it('rewrites a changed row from its first changed cell to its last, with the colours in effect there', () => {
    const red = (t: string) => `\u001B[31m${t}\u001B[39m`;
    expect(rowPatch(`loss ${red('0.123')} ok`, `loss ${red('0.456')} ok`, 4)).toBe('\u001B[4;8H\u001B[0;31m456\u001B[0m');
    expect(rowPatch('abcdef', 'abc', 2)).toBe('\u001B[2;4H\u001B[K'); // shorter: the rest is erased
    expect(rowPatch('same', 'same', 1)).toBe('');
    expect(rowPatch('file 图.png', 'file 图.jpg', 1)).toBeUndefined(); // a wide character: the row is written whole
  });

  it('a terminal applying its output shows exactly the last frame', () => {
    const vt = new VirtualScreen(10, 3);
    const w = new ScreenWriter({ write: (s) => vt.write(s) });
    const frames = ['one\ntwo\nthree', 'one\n2\nthree', 'uno\n2\ntres', '\u001B[1muno\u001B[22m\ndos', 'uno\ndos'];
    for (const f of frames) w.write(`${CLEAR_TERMINAL}${f}`);
    expect(vt.text()).toBe('uno\ndos\n');
  });
});

describe('redraw volume of the Job monitor at 170x50 while a job trains', () => {
  it('sends a small share of what full repaints would, no full clears, and leaves the frame Ink drew on screen', async () => {
    const dir = join(env.home, 'jobs', 'live');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'job.json'), JSON.stringify({ name: 'live' }));
    const metrics = join(dir, 'metrics.jsonl');
    writeFileSync(metrics, `${JSON.stringify({ event: 'start', step: 0, steps: 400, device: 'cpu (2 threads)' })}\n`);
    writeFileSync(join(dir, 'log.txt'), 'graft-trainer: training\n');
    let step = 0;
    const more = (n: number) => {
      let text = '';
      for (let i = 0; i < n; i++) {
        step++;
        text += `${JSON.stringify({ event: 'step', step, steps: 400, loss: 0.3 + 0.2 * Math.sin(step * 1.7) ** 2 + 0.5 * Math.exp(-step / 40), lr: 1e-3, s_per_step: 0.2, grad_norm: 0.1, epoch: 1 + Math.floor(step / 20) })}\n`;
      }
      appendFileSync(metrics, text);
      appendFileSync(join(dir, 'log.txt'), `step ${step}/400  loss 0.3\n`);
    };
    more(100);
    const job = new Rules(env.store).add({ jobDir: dir, configPath: join(dir, 'job.json'), name: 'live' });
    env.store.db.prepare("UPDATE jobs SET state = 'running', runs = 1 WHERE id = ?").run(job.id);
    const system = { gpus: null, gpuError: 'nvidia-smi not found', cpuPct: 50, cores: 2, memUsedMb: 1024, memTotalMb: 8192 };
    const h = await startTui(<App store={env.store} presets={env.presets} gpus={[]} system={system} size={{ columns: 170, rows: 50 }} initialScreen="job" initialJob={job.id} />, 170, 50);
    await h.waitFor((s) => s.includes('step 100/400'), 'the monitor');
    const writer = h.tui.writer;
    const bytes0 = h.bytes(), frames0 = writer.stats.frames, clears0 = h.clears();
    for (let k = 0; k < 20; k++) { more(5); await tick(110); }
    await h.waitFor((s) => s.includes('step 200/400'), 'the last steps');
    await h.settled();
    const sent = h.bytes() - bytes0;
    const frames = writer.stats.frames - frames0;
    const fullFrame = Buffer.byteLength(writer.screen()!.join('\n'));
    expect(frames).toBeGreaterThan(3);
    expect(h.clears() - clears0).toBe(0);
    console.log(`redraw: ${sent} bytes in ${frames} frames; a full frame is ${fullFrame} bytes`);
    expect(sent).toBeLessThan(0.25 * frames * fullFrame); // full repaints: frames x fullFrame, and a clear each
    // What is on the terminal is what Ink drew.
    expect(h.screen()).toBe(writer.screen()!.map((l) => plain(l).trimEnd()).join('\n'));
    h.unmount();
  });
});
