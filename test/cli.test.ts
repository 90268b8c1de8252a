// The built command line outside the TUI: validate, help, and a clear refusal without a terminal.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { COMMANDS, usageLine } from '../src/cliSpec.js';
import { tempDir, tinyJobYaml, writeImage } from './helpers/dataset.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'src', 'cli.js');
const dir = tempDir('graft-cli-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const run = (...args: string[]) => spawnSync('node', [CLI, ...args], { encoding: 'utf8', env: { ...process.env, GRAFT_HOME: join(dir, 'home') } });

describe('graft (built)', () => {
  it('validate accepts a reference config, lists the keys it ignores, and says up front that graft cannot train it yet (exit 3)', () => {
    const r = run('validate', join(import.meta.dirname, 'fixtures', 'wan22_14b_reference.yaml'));
    expect(r.status).toBe(3);
    expect(r.stdout).toContain('ignored (kept on save): config.process[0].train.train_unet');
    expect(r.stdout).toContain("not supported yet: Wan 2.2 T2V 14B: graft's trainer cannot train this family yet (trainer support: not yet); today it trains FLUX.1 (dev / schnell), Z-Image Turbo, Z-Image (base), graft-tiny (built-in demo, CPU).");
    expect(r.stdout).toMatch(/wan22_14b_reference\.yaml: valid \(Wan 2\.2 T2V 14B\), but graft cannot train it yet \(1 reason above\)/);
  });

  it('validate: a Z-Image Turbo reference config trains (its dataset folder is missing here: exit 1)', () => {
    const r = run('validate', join(import.meta.dirname, 'fixtures', 'zimage_turbo_reference.yaml'));
    expect(r.status).toBe(1);
    expect(r.stdout).toContain('ignored (kept on save): config.process[0].save.save_format');
    expect(r.stdout).not.toContain('not supported yet');
    expect(r.stdout).toContain('error: config.process[0].datasets[0].folder_path: no such folder: /data/character');
  });

  it('validate: a FLUX.1 reference config trains, with each setting the trainer ignores named (its dataset folder is missing here: exit 1)', () => {
    const r = run('validate', join(import.meta.dirname, 'fixtures', 'flux_reference.yaml'));
    expect(r.status).toBe(1);
    expect(r.stdout).not.toContain('not supported yet');
    expect(r.stdout).not.toContain('Transformer quantization'); // qfloat8 is built
    expect(r.stdout).not.toContain('Text Encoder quantization'); // and for the text encoders too
    expect(r.stdout).toContain('error: config.process[0].datasets[0].folder_path: no such folder: /data/flux_person');
  });

  it('validate: a job graft trains is ok (exit 0); its dataset folder must exist and hold pictures (exit 1)', async () => {
    const data = join(dir, 'valid-data');
    mkdirSync(data);
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    const file = join(dir, 'valid.yaml');
    writeFileSync(file, tinyJobYaml({ name: 'validjob', trainingFolder: join(dir, 'out'), datasets: [{ folder_path: data }], trigger: 'zxq' }));
    const ok = run('validate', file);
    expect([ok.status, ok.stdout.trim().split('\n').pop()]).toEqual([0, `${file}: ok (graft-tiny (built-in demo, CPU))`]);
    writeFileSync(file, tinyJobYaml({ name: 'validjob', trainingFolder: join(dir, 'out'), datasets: [{ folder_path: join(dir, 'nowhere') }], trigger: 'zxq' }));
    const missing = run('validate', file);
    expect(missing.status).toBe(1);
    expect(missing.stdout).toContain(`error: config.process[0].datasets[0].folder_path: no such folder: ${join(dir, 'nowhere')}`);
    const empty = join(dir, 'empty-data');
    mkdirSync(empty);
    writeFileSync(join(empty, 'notes.txt'), 'no pictures here');
    writeFileSync(file, tinyJobYaml({ name: 'validjob', trainingFolder: join(dir, 'out'), datasets: [{ folder_path: empty }], trigger: 'zxq' }));
    expect(run('validate', file).stdout).toContain(`error: config.process[0].datasets[0].folder_path: no images in ${empty} (graft reads .jpg .jpeg .png .webp files)`);
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

  it('prepare prints progress and a summary, and refuses bad input in one line', async () => {
    const data = join(dir, 'data');
    mkdirSync(data);
    await writeImage(join(data, 'a.png'), { width: 48, height: 32 });
    writeFileSync(join(data, 'a.txt'), 'a red and blue thing');
    await writeImage(join(data, 'b.jpg'), { width: 32, height: 48, format: 'jpeg' });
    const file = join(dir, 'tiny.yaml');
    writeFileSync(file, tinyJobYaml({ name: 'clijob', trainingFolder: join(dir, 'out'), datasets: [{ folder_path: data, flip_x: true }], trigger: 'zxq' }));
    const r = run('prepare', file);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toBe(`dataset 1/1: ${data} (resolutions 32, divisibility 4)`);
    expect(lines).toContain(`dataset ${data}: 2 images -> 4 items; buckets 36x24 x2, 24x36 x2; captions 1 from .txt`);
    expect(lines).toContain('  1 image without a caption: trained on the trigger word "zxq" alone');
    expect(r.stdout).toMatch(/prepared 2\/2 images \(2 PNGs written, 0 reused\)/);
    expect(r.stdout).toMatch(/prepared 2 images into 4 items in [\d.]+ s: 2 PNGs written, 0 reused, 0 stale removed/);
    expect(existsSync(join(dir, 'out', 'clijob', 'job.json'))).toBe(true);
    expect(run('prepare', join(dir, 'out', 'clijob')).stdout).toContain('0 PNGs written, 2 reused');

    const missing = run('prepare', join(dir, 'nope.yaml'));
    expect([missing.status, missing.stderr]).toEqual([1, `graft: no such file or folder: ${join(dir, 'nope.yaml')}\n`]);
    expect(run('prepare').status).toBe(2);
  });

  it('--help names GRAFT_HOME and the exit codes', () => {
    const h = run('--help');
    expect(h.status).toBe(0);
    expect(h.stdout).toContain('$GRAFT_HOME, default ~/.graft');
    expect(h.stdout).toContain('Exit codes: 0 done; 1 failed or refused');
  });

  it('--help and -h on every command and subcommand print its usage and exit 0', () => {
    for (const spec of COMMANDS.filter((c) => !c.hidden && c.path.length > 0)) {
      for (const flag of ['--help', '-h']) {
        const r = run(...spec.path, flag);
        expect([r.status, r.stdout.split('\n')[0]], `${spec.path.join(' ')} ${flag}`).toEqual([0, `usage: ${usageLine(spec)}`]);
      }
    }
    for (const group of ['queue', 'daemon']) {
      const r = run(group, '--help');
      expect(r.status).toBe(0);
      expect(r.stdout).toContain(`graft ${group} `);
      expect(run(group).status).toBe(0); // a group alone lists its commands
    }
  });

  it('an unknown command is named with the nearest one; an unknown option or a missing argument is a usage error (exit 2)', () => {
    expect([run('qeue', 'ls').status, run('qeue', 'ls').stderr]).toEqual([2, 'graft: unknown command: qeue (did you mean graft queue?); graft --help lists the commands (a config file to open needs its path, e.g. ./qeue.yaml)\n']);
    expect(run('queue', 'lss').stderr).toBe('graft: unknown command: graft queue lss (did you mean graft queue ls?); graft queue --help lists them\n');
    expect(run('validte', 'x.yaml').stderr).toContain('(did you mean graft validate?)');
    const bogus = run('queue', 'ls', '--bogus');
    expect([bogus.status, bogus.stderr]).toEqual([2, "graft: graft queue ls [--json]: Unknown option '--bogus'\n"]);
    expect(run('validate').stderr).toBe('graft: missing argument; usage: graft validate <config.yaml>\n');
    expect(run('logs', 'a', 'b').stderr).toBe('graft: unexpected argument "b"; usage: graft logs <job> [-f]\n');
    // A path that is not there is still "no such file", not an unknown command.
    expect(run(join(dir, 'missing.yaml')).stderr).toBe(`graft: no such file: ${join(dir, 'missing.yaml')}\n`);
  });

  it('the queue and the daemon answer in JSON for scripts', () => {
    const ls = run('queue', 'ls', '--json');
    expect([ls.status, JSON.parse(ls.stdout)]).toEqual([0, []]);
    const st = run('daemon', 'status', '--json');
    expect(st.status).toBe(3); // no daemon in this home
    expect(JSON.parse(st.stdout)).toEqual({ running: false, home: join(dir, 'home') });
  });
});
