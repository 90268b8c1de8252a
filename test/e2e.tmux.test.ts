// End to end: the real `graft` (built to dist/) in a real terminal (tmux), driven by keys like a user.
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { load } from 'js-yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Store } from '../src/queue/store.js';
import { CLI, requireDist, sleep } from './helpers/daemon.js';
import { makeDataset, tempDir } from './helpers/dataset.js';
import { tmuxDriver } from './helpers/tmux.js';

const SOCKET = `graft-e2e-${process.pid}`;
const SESSION = 'e2e';

const { tmux, screen, waitScreen, waitFor, keys, open, close } = tmuxDriver(SOCKET, SESSION, 15_000);
async function type(text: string): Promise<void> {
  tmux('send-keys', '-t', SESSION, '-l', text);
  await waitFor(text.slice(-12));
}

/** Start graft in a fresh session of the given size; the shell line after it reports how graft exited. */
const start = (columns: number, rows: number, ready: string) =>
  open(`GRAFT_HOME=${home} node ${CLI}; echo "graft exited with $?"; sleep 60`, columns, rows, ready);

let home: string;
let data: string;

beforeAll(() => {
  requireDist();
  home = tempDir('graft-e2e-home-');
  data = tempDir('graft-e2e-data-');
  makeDataset(join(data, 'shapes'), {
    images: [
      { name: 'a.png', width: 1200, height: 1200, caption: 'a red square' },
      { name: 'b.png', width: 900, height: 900, caption: 'a blue circle' },
      { name: 'c.png', width: 1600, height: 900, caption: 'a wide field' },
    ],
  });
});

afterAll(() => {
  close();
  rmSync(home, { recursive: true, force: true });
  rmSync(data, { recursive: true, force: true });
});

describe('graft in tmux', () => {
  it('creates a job with a dataset, rank 32 and 2000 steps, saves it, and the YAML on disk says so', async () => {
    await start(100, 30, 'Jobs: 0 (0 drafts)');

    // Datasets: add the folder (Tab completes the path), keep the suggested name, wait for the scan.
    await keys('4');
    await waitFor('press a');
    await keys('a');
    await type(join(data, 'sha'));
    await keys('Tab');
    await waitFor(`${join(data, 'shapes')}/`);
    await keys('Enter');
    await waitFor('Name for this dataset');
    await keys('Enter');
    await waitFor('Images 3');

    // New Job: the default family is one graft trains here, the built-in demo model.
    await keys('2');
    await waitFor('Training Name');
    expect(screen()).toContain('graft-tiny (built-in demo, CPU)');
    await keys('Tab', 'Tab', 'Tab', 'Down'); // TARGET > Linear Rank
    await waitFor('Linear Rank: Rank of the adapter');
    await keys('Enter', 'C-u');
    await type('32');
    await keys('Enter');
    await waitFor(/Linear Rank\s+32/);
    await keys('Tab', 'Tab', 'Down', 'Down'); // TRAINING > Steps
    await waitFor('Steps: Total optimizer steps');
    await keys('Enter', 'C-u');
    await type('2000');
    await keys('Enter');
    await waitFor(/Steps\s+2000/);
    await keys('Tab', 'Tab', 'Enter'); // DATASETS > Target Dataset: pick the named dataset
    await waitFor('Type a path...');
    await keys('Enter');
    await waitFor(/Target Dataset\s+shapes/);
    await keys('s');
    await waitFor('saved ');

    const configPath = join(home, 'output', 'my_lora_v1', 'config.yaml');
    const yaml = load(readFileSync(configPath, 'utf8')) as any;
    const proc = yaml.config.process[0];
    expect(yaml.job).toBe('extension');
    expect(proc.model).toMatchObject({ arch: 'graft_tiny', name_or_path: 'presets/graft-tiny' });
    expect(proc.network).toMatchObject({ type: 'lora', linear: 32, linear_alpha: 32 });
    expect(proc.train.steps).toBe(2000);
    expect(proc.datasets[0].folder_path).toBe(join(data, 'shapes'));
    const store = new Store(home);
    expect(store.listJobs()).toEqual([expect.objectContaining({ name: 'my_lora_v1', state: 'draft', config_path: configPath })]);
    store.close();

    // Resizes live: the YAML preview pane appears when there is room, and goes when there is not.
    tmux('resize-window', '-t', SESSION, '-x', '160', '-y', '48');
    await waitFor('config.yaml preview');
    tmux('resize-window', '-t', SESSION, '-x', '80', '-y', '24');
    await waitScreen((s) => !s.includes('config.yaml preview') && /Target Dataset\s+shapes/.test(s), 'narrow layout');

    // q goes back to the Dashboard (which now counts the draft); q there quits and leaves the terminal clean.
    await keys('q');
    await waitFor('Jobs: 1 (1 draft)');
    await keys('q');
    const after = await waitFor('graft exited with 0');
    expect(after).not.toContain('Dashboard');
  });

  it('Ctrl+C quits cleanly even in the middle of an edit', async () => {
    await start(80, 24, 'Jobs:');
    await keys('2');
    await waitFor('Training Name');
    await sleep(500); // as at start: the new screen's key handler attaches a moment after its first frame
    await keys('Enter');
    await type('half-typed');
    await keys('C-c');
    const after = await waitFor('graft exited with 0');
    expect(after).not.toContain('half-typed');
  });
});
