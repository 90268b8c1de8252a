import { join } from 'node:path';
import { render } from 'ink-testing-library';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { App } from '../screens/App.js';
import { DASHBOARD_KEYS } from '../screens/Dashboard.js';
import { DATASETS_KEYS } from '../screens/Datasets.js';
import { GLOBAL_KEYS } from '../screens/Help.js';
import { MONITOR_KEYS } from '../screens/Monitor.js';
import { NEW_JOB_KEYS } from '../screens/NewJob.js';
import { QUEUE_KEYS } from '../screens/Queue.js';
import { newJobDoc, procPath } from '../src/config/document.js';
import { saveJob } from '../src/config/jobfile.js';
import { setAt } from '../src/util/objpath.js';
import { flat, KEY, press, settle, testEnv, waitFor, type Env } from './helpers/ink.js';

let env: Env;
beforeEach(() => { env = testEnv(); });
afterEach(() => env.cleanup());

async function app(props: Partial<Parameters<typeof App>[0]> = {}) {
  const r = render(<App store={env.store} presets={env.presets} gpus={[]} size={{ columns: 80, rows: 24 }} {...props} />);
  await settle();
  return r;
}

describe('frame', () => {
  it('switches screens by number, shows help with ?, and goes back with q and Esc', async () => {
    const r = await app();
    expect(r.lastFrame()).toContain('Jobs: 0 (0 drafts)');
    await press(r, '2');
    expect(r.lastFrame()).toContain('Training Name');
    await press(r, '?');
    expect(r.lastFrame()).toContain('Keys: New Job');
    expect(r.lastFrame()).toContain('save config.yaml and register a draft');
    expect(r.lastFrame()).toContain('quit from anywhere');
    await press(r, 'x'); // any key closes help
    expect(r.lastFrame()).not.toContain('Keys: New Job');
    await press(r, 'q');
    expect(r.lastFrame()).toContain('Jobs: 0 (0 drafts)');
    await press(r, '4');
    expect(r.lastFrame()).toContain('DATASETS');
    await press(r, KEY.escape);
    expect(r.lastFrame()).toContain('Jobs: 0 (0 drafts)');
    await press(r, '3');
    expect(r.lastFrame()).toContain('No jobs yet');
    r.unmount();
  });

  it('? lists every key of each screen and the keys that work everywhere, within the screen at 80x24', async () => {
    const screens: [string, string, { key: string }[]][] = [
      ['1', 'Dashboard', DASHBOARD_KEYS.map(([key]) => ({ key }))], ['2', 'New Job', NEW_JOB_KEYS.map(([key]) => ({ key }))],
      ['3', 'Training Queue', QUEUE_KEYS.map(([key]) => ({ key }))], ['4', 'Datasets', DATASETS_KEYS.map(([key]) => ({ key }))],
      ['5', 'Job', MONITOR_KEYS.map(([key]) => ({ key }))],
    ];
    const r = await app();
    for (const [k, title, keys] of screens) {
      await press(r, k, '?');
      const f = r.lastFrame()!;
      expect(f).toContain(`Keys: ${title}`);
      for (const { key } of [...keys, ...GLOBAL_KEYS.map(([key]) => ({ key }))]) expect(f, `${title}: ${key}`).toContain(key);
      expect(f.split('\n').length).toBeLessThanOrEqual(24);
      await press(r, 'x'); // any key closes it
    }
    expect(NEW_JOB_KEYS.map(([k]) => k)).toContain('Home End');
    expect(GLOBAL_KEYS[0]![0]).toBe('1 2 3 4 5');
    r.unmount();
  });

  it('while a field is being edited, digits and q are text, not screen keys', async () => {
    const r = await app({ initialScreen: 'new' });
    await press(r, KEY.enter, KEY.ctrlU, 'q', '3', '4');
    expect(r.lastFrame()).toContain('q34');
    expect(r.lastFrame()).toContain('Training Name');
    await press(r, KEY.escape);
    expect(r.lastFrame()).toMatch(/Training Name\s+my_lora_v1/); // Esc cancelled the edit
    r.unmount();
  });

  it('shows the GPU probe result and the VRAM warning for the selected GPU', async () => {
    const flux = { path: '/tmp/flux.yaml', doc: newJobDoc(env.presets.find((p) => p.family === 'flux1')!, 'output'), ignored: [] };
    const r = await app({ gpus: [{ index: 0, name: 'RTX 4080', memoryMb: 16376 }], initial: flux, initialScreen: 'dashboard' });
    expect(r.lastFrame()).toContain('GPUs: 0: RTX 4080 16 GB');
    await press(r, '2', 'i');
    expect(flat(r.lastFrame())).toContain('FLUX.1 (dev / schnell) needs about 24 GB (guide: 24 GB minimum, 48 GB+ comfortable); GPU 0 (RTX 4080) has 16 GB.');
    r.unmount();
  });
});

describe('Training Queue', () => {
  it('lists saved drafts and opens one in New Job', async () => {
    const doc = setAt(newJobDoc(env.presets[0]!, 'output', 'queued_one'), procPath('datasets', 0, 'folder_path'), '/data/q');
    const saved = saveJob(doc, env.presets, env.store);
    const r = await app({ initialScreen: 'queue' });
    expect(r.lastFrame()).toContain('TRAINING QUEUE');
    expect(r.lastFrame()).toMatch(/1\s+draft\s+cpu\s+queued_one/); // no GPU on this (test) machine
    await press(r, KEY.enter);
    expect(r.lastFrame()).toMatch(/Training Name\s+queued_one/);
    expect(flat(r.lastFrame())).toContain(`loaded ${saved.configPath}`);
    r.unmount();
  });
});

describe('loading a YAML in New Job', () => {
  it('o opens a path (with completion), loads the reference config and reports ignored keys once', async () => {
    const r = await app({ initialScreen: 'new' });
    await press(r, 'o', KEY.ctrlU, ...join(import.meta.dirname, 'fixtures', 'wan22_14b_ref'), KEY.tab);
    expect(r.lastFrame()).toContain('wan22_14b_reference.yaml');
    await press(r, KEY.enter);
    const f = flat(r.lastFrame());
    expect(f).toContain('loaded;');
    expect(f).toContain('loaded; 3 keys graft ignores (kept on save)');
    await press(r, 'i');
    expect(flat(r.lastFrame())).toContain('ignored (kept on save): config.process[0].train.train_unet');
    expect(flat(r.lastFrame())).toContain('ignored (kept on save): config.process[0].sample.neg');
    await press(r, KEY.escape);
    expect(r.lastFrame()).toMatch(/Training Name\s+wan22_fixture_lora_v1/);
    await press(r, KEY.tab);
    expect(r.lastFrame()).toContain('Wan 2.2 T2V 14B');
    expect(r.lastFrame()).toContain('MULTISTAGE');
    r.unmount();
  });

  it('a file that is not there is reported and nothing changes', async () => {
    const r = await app({ initialScreen: 'new' });
    await press(r, 'o', ...'/nonexistent/config.yaml', KEY.enter);
    expect(r.lastFrame()).toContain('no such file: /nonexistent/config.yaml');
    await press(r, KEY.escape);
    await waitFor(r.lastFrame, (f) => /Training Name\s+my_lora_v1/.test(f));
    r.unmount();
  });
});

describe('text input', () => {
  it('keys that arrive faster than the screen redraws are all kept, in order', async () => {
    // Each key reaches the handlers in its own turn, as packets do, but before React has drawn the key
    // before it: a burst over ssh, or a loaded machine. None may start from the text before the last key.
    const burst = async (keys: string[]) => {
      for (const k of keys) {
        r.stdin.write(k);
        await Promise.resolve();
      }
      await settle();
    };
    const r = await app({ initialScreen: 'new' });
    await press(r, KEY.enter, KEY.ctrlU);
    await burst([...'fast_name', KEY.left, KEY.left, KEY.backspace, 'X']);
    await press(r, KEY.enter);
    expect(r.lastFrame()).toMatch(/Training Name\s+fast_nXme/);
    // Moves: three panels on and one field down is TARGET's Linear Rank, however fast they come.
    await burst([KEY.tab, KEY.tab, KEY.tab, KEY.down]);
    expect(r.lastFrame()).toContain('Linear Rank: Rank of the adapter');
    // The Enter that accepts an input is the input's alone, and the key after it is the form's again.
    await press(r, KEY.enter, KEY.ctrlU);
    await burst(['1', '6', KEY.enter, KEY.down]);
    expect(r.lastFrame()).toMatch(/Linear Rank\s+16\s/);
    expect(r.lastFrame()).toContain('Data Type: ');
    r.unmount();
  });
});
