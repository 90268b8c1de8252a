import { readFileSync } from 'node:fs';
import { load } from 'js-yaml';
import { render } from 'ink-testing-library';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { App } from '../screens/App.js';
import { flat, KEY, press, settle, testEnv, type Env } from './helpers/ink.js';

let env: Env;
beforeEach(() => { env = testEnv(); });
afterEach(() => env.cleanup());

async function app(e: Env) {
  const r = render(<App store={e.store} presets={e.presets} gpus={[]} initialScreen="new" size={{ columns: 80, rows: 24 }} />);
  await settle();
  return r;
}

describe('New Job screen', () => {
  it('shows the panels and the focused field with its help', async () => {
    const { lastFrame, unmount } = await app(env);
    const f = lastFrame()!;
    for (const p of ['JOB', 'MODEL', 'QUANTIZATION', 'TARGET', 'SAVE', 'TRAINING', 'ADVANCED', 'DATASETS', 'SAMPLE']) expect(f).toContain(p);
    expect(f).toContain('Training Name: Names the job folder');
    unmount();
  });

  it('edits Linear Rank, validates as you type, and saves config.yaml plus a draft', async () => {
    const r = await app(env);
    const { lastFrame, unmount } = r;
    await press(r, KEY.tab, KEY.tab, KEY.tab, KEY.down); // TARGET: Target Type, Linear Rank
    expect(lastFrame()).toContain('Linear Rank: Rank of the adapter');
    await press(r, KEY.enter, KEY.ctrlU, '3', '2', 'x');
    expect(flat(lastFrame())).toContain('config.process[0].network.linear: must be a whole number from 1 to 1024 (got "32x")');
    await press(r, KEY.backspace, KEY.enter);
    expect(lastFrame()).toMatch(/Linear Rank\s+32/);
    expect(lastFrame()).not.toContain('network.linear: must');
    // Save refuses: no dataset folder yet.
    await press(r, 's');
    expect(lastFrame()).toContain('cannot save: 1 error');
    expect(env.store.listJobs()).toHaveLength(0);
    // DATASETS: type a folder path (no named datasets, so Enter opens the text input).
    await press(r, KEY.tab, KEY.tab, KEY.tab, KEY.tab); // SAVE, TRAINING, ADVANCED, DATASETS
    expect(lastFrame()).toContain('Target Dataset: Folder of images');
    await press(r, KEY.enter, ...'/data/flux_subject', KEY.enter, 's');
    expect(lastFrame()).toContain('saved ');
    const jobs = env.store.listJobs();
    expect(jobs).toHaveLength(1);
    expect(jobs[0]).toMatchObject({ name: 'my_lora_v1', state: 'draft', gpu: 0, position: 0 });
    const yaml = load(readFileSync(jobs[0]!.config_path, 'utf8')) as any;
    expect(yaml.job).toBe('extension');
    expect(yaml.config.process[0].network).toMatchObject({ linear: 32, linear_alpha: 32 });
    expect(yaml.config.process[0].datasets[0].folder_path).toBe('/data/flux_subject');
    // A new job starts on the family graft's trainer trains: the built-in demo model.
    expect(yaml.config.process[0].model).toMatchObject({ arch: 'graft_tiny', name_or_path: 'presets/graft-tiny' });
    unmount();
  });

  it('loads a family preset when the Model Architecture changes, and says when the trainer cannot run it', async () => {
    const r = await app(env);
    const { lastFrame, unmount } = r;
    await press(r, KEY.tab); // MODEL: Model Architecture
    expect(lastFrame()).toContain('graft-tiny (built-in demo');
    // The help line says what the chosen family is (its preset's help), not only what the field does.
    expect(flat(lastFrame())).toContain("graft-tiny (built-in demo, CPU): graft's own tiny FLUX-layout");  // cut at 80 columns
    await press(r, KEY.enter);
    const { presets } = env;
    const tiny = presets.findIndex((p) => p.family === 'graft_tiny');
    expect(lastFrame()).toContain(`Model Architecture (${tiny + 1}/${presets.length}`);
    expect(lastFrame()).toContain('image, trains here');
    // Pick "Wan 2.2 T2V 14B" from the list.
    const target = presets.findIndex((p) => p.family === 'wan22_14b_t2v');
    await press(r, ...Array(target - tiny).fill(KEY.down), KEY.enter);
    const f = flat(lastFrame());
    expect(f).toContain('Wan 2.2 T2V 14B');
    expect(f).toContain('ai-toolkit/Wan2.2-T2V-A14B'); // the rest is cut at 80 columns
    expect(f).toContain('MULTISTAGE');
    expect(f).toContain('Wan 2.2 T2V 14B: Two 14B experts (high noise / low noise)');
    // Up front, before anything is queued: graft cannot train this family yet.
    expect(f).toContain("⊘ not supported yet: Wan 2.2 T2V 14B: graft's trainer cannot train this family yet (trainer support: not yet)");
    expect(f).toContain('⊘ graft cannot train this job yet: Wan 2.2 T2V 14B'); // the message line, on every field
    unmount();
  });

  it('cycles a choice with the arrows and refuses excluded combinations with an explanation', async () => {
    const r = await app(env);
    const { lastFrame, unmount } = r;
    await press(r, KEY.tab, KEY.tab, KEY.tab, KEY.tab, KEY.tab); // MODEL QUANTIZATION TARGET SAVE TRAINING
    expect(lastFrame()).toContain('Batch Size: Images per step');
    // Move to Unload TE and Cache Text Embeddings; turn both on.
    let guard = 0;
    while (!lastFrame()!.includes('Unload TE: Encode only') && guard++ < 20) await press(r, KEY.down);
    await press(r, ' ', KEY.down, ' ');
    expect(flat(lastFrame())).toContain('cache_text_embeddings: true excludes config.process[0].train.unload_text_encoder: true');
    await press(r, ' ');
    expect(lastFrame()).not.toContain('excludes');
    unmount();
  });

  it('adds, duplicates and removes dataset blocks and prompts', async () => {
    const r = await app(env);
    const { lastFrame, unmount } = r;
    await press(r, KEY.tab, KEY.tab, KEY.tab, KEY.tab, KEY.tab, KEY.tab, KEY.tab); // DATASETS
    await press(r, 'a');
    expect(lastFrame()).toContain('-- Dataset 2 --');
    await press(r, 'x');
    expect(lastFrame()).not.toContain('-- Dataset 2 --');
    await press(r, 'x');
    expect(lastFrame()).toContain('a job needs at least one dataset');
    await press(r, KEY.tab); // SAMPLE
    await press(r, 'a');
    let guard = 0;
    while (!lastFrame()!.includes('-- Prompt 2 --') && guard++ < 30) await press(r, KEY.down);
    expect(lastFrame()).toContain('-- Prompt 2 --');
    unmount();
  });

  it('shows the YAML preview on a narrow terminal with p', async () => {
    const r = await app(env);
    const { lastFrame, unmount } = r;
    await press(r, 'p');
    expect(lastFrame()).toContain('config.yaml preview');
    expect(lastFrame()).toContain('job: extension');
    await press(r, KEY.escape);
    expect(lastFrame()).not.toContain('config.yaml preview');
    unmount();
  });
});
