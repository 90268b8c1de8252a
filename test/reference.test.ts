// Every example training config of the reference toolkit (ostris/ai-toolkit config/examples), as fixtures
// written from their structure, loads in `graft validate`: no "invalid" line; what graft cannot train yet is
// named as such, and validate exits 3 (valid, not supported yet) for each it cannot train, 0 for the others.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireDist, CLI } from './helpers/daemon.js';
import { tempDir, writeImage } from './helpers/dataset.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'reference');
const dir = tempDir('graft-reference-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));
beforeAll(async () => {
  requireDist();
  mkdirSync(join(dir, 'images'));
  await writeImage(join(dir, 'images', 'a.png'), { width: 64, height: 64 });
});

// What each must say it cannot do (besides the family, for those graft does not train).
const EXPECTED: Record<string, string[]> = {
  'train_flex_redux.yaml': ['training every weight (no network: section)', 'adapter training (adapter.type "redux")', 'timestep_type flux_shift'],
  'train_full_fine_tune_flex.yaml': ['training every weight (no network: section)'],
  'train_full_fine_tune_lumina.yaml': ['training every weight (no network: section)', 'timestep_type lumina2_shift'],
  'train_lora_flux_mps.yaml': ['device mps'],
  'train_lora_lumina.yaml': ['timestep_type lumina2_shift'],
  'train_lora_zimage_turbo_apple_silicon.yaml': ['device mps'],
};
// The families graft trains: FLUX.1 dev and schnell, Flex.1 (is_flux: true, trained as FLUX.1 by the reference
// too) and Z-Image; each config with the family validate names.
const FLUX1 = ['beam_train_lora_flux_24gb.yaml', 'modal_train_lora_flux_24gb.yaml', 'train_flex_redux.yaml', 'train_full_fine_tune_flex.yaml',
  'train_lora_flex_24gb.yaml', 'train_lora_flux_24gb.yaml', 'train_lora_flux_low_ram.yaml', 'train_lora_flux_mps.yaml',
  'train_lora_flux_schnell_24gb.yaml', 'train_lora_flux_with_warmup.yaml'];
const TRAINS: Record<string, string> = {
  ...Object.fromEntries(FLUX1.map((f) => [f, 'FLUX.1 (dev / schnell)'])),
  'train_lora_zimage_base_32gb.yaml': 'Z-Image (base)',
  'train_lora_zimage_turbo_32gb.yaml': 'Z-Image Turbo',
  'train_lora_zimage_turbo_apple_silicon.yaml': 'Z-Image Turbo',
};
const FAMILY: Record<string, string> = {
  'train_lora_sd35_large_24gb.yaml': 'Stable Diffusion 3 / 3.5 (arch sd3): graft has no preset for this family',
  'train_lora_wan21_1b_24gb.yaml': 'Wan 2.1 T2V 1.3B:', // plain arch wan21, told apart by name_or_path
  'train_lora_wan21_14b_24gb.yaml': 'Wan 2.1 T2V 14B:',
  'train_lora_lumina.yaml': 'Lumina2:', // legacy flag is_lumina2
  'train_slider.example.yml': '"slider" training (job: "train")',
};

describe('reference toolkit example configs', () => {
  const files = readdirSync(FIXTURES).sort();
  it('there is one fixture per example training config', () => {
    expect(files.length).toBe(29);
  });
  it.each(files)('%s loads; what graft cannot train is named, not called invalid', (file) => {
    const text = readFileSync(join(FIXTURES, file), 'utf8').replaceAll('/path/to/images/folder', join(dir, 'images'));
    const path = join(dir, file);
    writeFileSync(path, text);
    const r = spawnSync('node', [CLI, 'validate', path], { encoding: 'utf8', env: { ...process.env, GRAFT_HOME: join(dir, 'home') } });
    expect(r.stdout).not.toMatch(/^error:/m);
    const expected = EXPECTED[file] ?? [];
    const family = TRAINS[file];
    const trained = family !== undefined;
    // A config of a family graft trains trains unless it asks for something else graft cannot do (exit 3 then, as for the rest).
    expect(r.status, r.stdout + r.stderr).toBe(trained && expected.length === 0 ? 0 : 3);
    const not = r.stdout.split('\n').filter((l) => l.startsWith('not supported yet: '));
    if (trained) expect(r.stdout).toContain(`${path}: ${expected.length ? `valid (${family}), but` : `ok (${family})`}`);
    else expect(not[0]).toContain(FAMILY[file] ?? "graft's trainer cannot train this family yet");
    for (const e of expected) expect(not.some((l) => l.includes(e)), `${file}: ${e}`).toBe(true);
    expect(not).toHaveLength((trained ? 0 : 1) + expected.length);
  });
});
