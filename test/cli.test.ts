// The built command line outside the TUI: validate, help, and a clear refusal without a terminal.
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from './helpers/dataset.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'src', 'cli.js');
const dir = tempDir('graft-cli-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const run = (...args: string[]) => spawnSync('node', [CLI, ...args], { encoding: 'utf8', env: { ...process.env, GRAFT_HOME: join(dir, 'home') } });

describe('graft (built)', () => {
  it('validate accepts a reference config and lists the keys it ignores', () => {
    const r = run('validate', join(import.meta.dirname, 'fixtures', 'flux_reference.yaml'));
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('ignored (kept on save): config.process[0].save.push_to_hub');
    expect(r.stdout).toMatch(/flux_reference\.yaml: ok \(FLUX\.1 \(dev \/ schnell\)\)/);
  });

  it('validate fails with the path, value and what is allowed', () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'job: extension\nconfig:\n  name: bad\n  process:\n    - type: sd_trainer\n      network: {type: lora, linear: 0}\n      datasets: [{folder_path: /d}]\n      model: {arch: flux, name_or_path: x}\n');
    const r = run('validate', file);
    expect(r.status).toBe(1);
    expect(r.stdout).toContain('error: config.process[0].network.linear: must be a whole number from 1 to 1024 (got 0)');
  });

  it('without a terminal the TUI refuses with a hint instead of hanging', () => {
    const r = run();
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('the TUI needs a terminal');
  });

  it('--help names GRAFT_HOME', () => {
    expect(run('--help').stdout).toContain('$GRAFT_HOME, default ~/.graft');
  });
});
