// End to end: the built graft in tmux with the real daemon and trainer. Queue a tiny job from the Training
// Queue, quit the TUI, reopen it: the job is still running, then finished, with its loss chart and checkpoints.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, lab, requireBuilt, type Lab } from './helpers/daemon.js';
import { tmuxDriver } from './helpers/tmux.js';

const SOCKET = `graft-queue-e2e-${process.pid}`;
const SESSION = 'q';
let L: Lab;

const { tmux, waitFor, keys, open: openSession, close } = tmuxDriver(SOCKET, SESSION, 30_000);

const open = (ready: string) => openSession(
  `GRAFT_HOME=${L.home} GRAFT_TRAINER=${L.env.GRAFT_TRAINER} GRAFT_CLI=${CLI} OMP_NUM_THREADS=1 node ${CLI}; echo "graft exited with $?"; sleep 60`,
  80, 24, ready);

beforeAll(() => { requireBuilt(); L = lab('graft-queue-e2e-'); });
afterAll(() => {
  close();
  L?.cleanup();
});

describe('queue and monitor in tmux', () => {
  it('queues a job, survives the TUI quitting, and shows it running then finished with its chart and checkpoint', async () => {
    // Long enough (about 15 s at this machine's measured pace) to still run after the TUI quits and reopens.
    const probe = L.tinyJob(20);
    execFileSync(L.env.GRAFT_TRAINER!, ['train', probe], { stdio: 'ignore', env: L.env });
    const pace = L.events(probe).filter((e) => e.event === 'step').slice(5).map((e) => e.s_per_step as number).sort((a, b) => a - b)[7]!;
    const steps = Math.max(60, Math.min(5000, Math.round(15 / pace)));
    const every = Math.floor(steps / 3);
    const dir = L.tinyJob(steps, every);
    await open('Jobs: 0');
    await keys('3');
    await waitFor('TRAINING QUEUE');
    await keys('a');
    await waitFor('Job folder:');
    tmux('send-keys', '-t', SESSION, '-l', dir);
    await waitFor(dir);
    await keys('Enter');
    await waitFor(/queued job 1 'tiny'/);
    await waitFor(/running\s+cpu\s+tiny/); // no GPU on the test machine: the CPU slot
    await keys('q'); // back to the Dashboard
    await keys('q'); // quit: the job keeps running in the daemon
    await waitFor('graft exited with 0');
    const pid = L.job(1).pid!;
    expect(L.job(1).state).toBe('running');

    await open('Jobs: 1');
    expect(await waitFor(/1\s+running\s+cpu\s+tiny/)).toMatch(new RegExp(`\\d+/${steps}`));
    await keys('Enter'); // the job monitor
    const mid = await waitFor(new RegExp(`step \\d+/${steps}`));
    expect(mid).toContain('running');
    expect(L.job(1).pid).toBe(pid); // the same trainer, not a second run
    const done = await waitFor(`step ${steps}/${steps} 100% · done`, 90_000);
    expect(done).toContain('finished');
    expect(done).toMatch(/[\u2801-\u28ff]{5}/); // the loss chart
    expect(done).toContain(join(dir, 'tiny.safetensors'));
    expect(done).toMatch(/step \d+\s+\d+ KiB/); // a step checkpoint with its size
    expect(L.events(dir).filter((e) => e.event === 'start')).toHaveLength(1);
    await keys('q', 'q');
    await waitFor('graft exited with 0');
  });
});
