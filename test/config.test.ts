import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { load } from 'js-yaml';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyPreset, dumpJobYaml, newJobDoc, parseJobYaml, procPath } from '../src/config/document.js';
import { buildFields, displayValue, promptItems, setPromptItems } from '../src/config/fields.js';
import { jobFolder, loadJobFile, saveJob, SaveRefused } from '../src/config/jobfile.js';
import { unknownKeys, validateJob } from '../src/config/validate.js';
import { familyFor, loadPresets, presetById } from '../src/presets.js';
import { Store } from '../src/queue/store.js';
import { writeFileAtomic } from '../src/util/atomic.js';
import { getAt, setAt } from '../src/util/objpath.js';

const presets = loadPresets();
const FIXTURES = join(import.meta.dirname, 'fixtures');
const fixture = (name: string) => loadJobFile(join(FIXTURES, name));

let home: string;
let store: Store;
beforeEach(() => { home = mkdtempSync(join(tmpdir(), 'graft-cfg-')); store = new Store(home); });
afterEach(() => { store.close(); rmSync(home, { recursive: true, force: true }); });

describe('reference-layout configs', () => {
  it.each([
    ['flux_reference.yaml', 'flux1', ['config.process[0].save.push_to_hub', 'config.process[0].train.train_unet', 'config.process[0].train.train_text_encoder', 'config.process[0].sample.sample_start_step', 'config.process[0].sample.neg']],
    ['wan22_14b_reference.yaml', 'wan22_14b_t2v', ['config.process[0].train.train_unet', 'config.process[0].train.train_text_encoder', 'config.process[0].sample.neg']],
    ['zimage_turbo_reference.yaml', 'zimage_turbo', ['config.process[0].save.save_format', 'config.process[0].train.loss_type', 'config.process[0].logging', 'config.process[0].sample.neg']],
  ])('%s loads without errors as %s and reports the keys graft ignores', (file, family, ignored) => {
    const l = fixture(file);
    expect(validateJob(l.doc, presets)).toEqual([]);
    expect(familyFor(getAt(l.doc, procPath('model')), presets)?.family).toBe(family);
    expect(l.ignored).toEqual(ignored);
  });

  it.each(['flux_reference.yaml', 'wan22_14b_reference.yaml', 'zimage_turbo_reference.yaml'])('%s survives save and load unchanged, unknown keys included', (file) => {
    const l = fixture(file);
    const text = dumpJobYaml(l.doc);
    const again = parseJobYaml(text);
    expect(again).toEqual(l.doc);
    // And the values are the file's own: compare with a plain YAML parse of the original.
    expect(again).toEqual(load(readFileSync(join(FIXTURES, file), 'utf8')));
  });

  it('shows the loaded values in the form, including aliases and legacy spellings', () => {
    const flux = fixture('flux_reference.yaml').doc;
    const fields = buildFields(flux, { presets });
    const show = (label: string) => { const f = fields.find((x) => x.label === label)!; return displayValue(f, f.get(flux)); };
    expect(show('Model Architecture')).toBe('FLUX.1 (dev / schnell)'); // from is_flux: true
    expect(show('Data Type')).toBe('float16'); // the reference's spelling, kept
    expect(show('Learning Rate')).toBe('0.0001'); // written 1e-4
    expect(show('Gradient Accumulation')).toBe('1'); // gradient_accumulation_steps
    expect(show('Trigger Word')).toBe('p3r5on');
    expect(show('Use EMA')).toBe('[x]');
    const wan = fixture('wan22_14b_reference.yaml').doc;
    const wf = buildFields(wan, { presets });
    const t = wf.find((f) => f.label === 'Transformer')!;
    expect(displayValue(t, t.get(wan))).toBe('4-bit (NF4) + accuracy recovery adapter');
    expect(wf.find((f) => f.label === 'Switch Every')!.get(wan)).toBe(10);
    const z = fixture('zimage_turbo_reference.yaml').doc;
    expect(promptItems(z)[1]).toEqual({ prompt: '[trigger] on a beach, golden hour', seed: 7, network_multiplier: 0.8 });
  });

  it('editing one field changes only that key; the rest of the file, unknown keys too, stays', () => {
    const l = fixture('flux_reference.yaml');
    const fields = buildFields(l.doc, { presets });
    const steps = fields.find((f) => f.label === 'Steps')!;
    const edited = steps.set(l.doc, 2500);
    expect(getAt(edited, procPath('train', 'steps'))).toBe(2500);
    expect(setAt(edited, procPath('train', 'steps'), 2000)).toEqual(l.doc);
  });

  it('keeps prompts: as plain strings until a prompt gets its own settings', () => {
    const doc = fixture('flux_reference.yaml').doc;
    const items = promptItems(doc);
    const same = setPromptItems(doc, items);
    expect(getAt(same, procPath('sample', 'prompts'))).toEqual(getAt(doc, procPath('sample', 'prompts')));
    const withSeed = setPromptItems(doc, [{ ...items[0]!, seed: 3 }, items[1]!]);
    expect(getAt(withSeed, procPath('sample', 'prompts'))).toBeUndefined();
    expect(getAt(withSeed, procPath('sample', 'samples', 0))).toEqual({ prompt: items[0]!.prompt, seed: 3 });
  });
});

describe('presets', () => {
  it('has a preset for every family of SPEC.md section 2', () => {
    const families = presets.map((p) => p.family).sort();
    expect(families).toEqual([
      'chroma', 'flex1', 'flex2', 'flux1', 'flux2', 'flux_kontext', 'graft_tiny', 'hidream', 'hidream_e1', 'ltx2', 'lumina2', 'omnigen2',
      'qwen_image', 'qwen_image_2512', 'qwen_image_edit', 'qwen_image_edit_2509', 'qwen_image_edit_2511', 'sd15', 'sdxl',
      'wan21_14b', 'wan21_1b', 'wan21_i2v_480p', 'wan21_i2v_720p', 'wan22_14b_i2v', 'wan22_14b_t2v', 'wan22_5b', 'zimage', 'zimage_turbo',
    ]);
    expect(readdirSync(join(import.meta.dirname, '..', 'presets')).filter((f) => f.endsWith('.yaml'))).toHaveLength(28);
  });

  it.each(presets.map((p) => [p.family, p] as const))('%s makes a valid job once a dataset folder is set', (_, preset) => {
    let doc = newJobDoc(preset, '/tmp/out');
    doc = setAt(doc, procPath('datasets', 0, 'folder_path'), '/data/x');
    expect(validateJob(doc, presets)).toEqual([]);
    expect(familyFor(getAt(doc, procPath('model')), presets)).toBe(preset);
    expect(unknownKeys(doc)).toEqual([]);
  });

  it('switching family resets the old family\'s own settings and keeps the user\'s', () => {
    let doc = newJobDoc(presetById('wan22_14b_t2v', presets)!, '/tmp/out');
    doc = setAt(doc, procPath('train', 'steps'), 1234);
    expect(getAt(doc, procPath('model', 'model_kwargs', 'train_high_noise'))).toBe(true);
    doc = applyPreset(doc, presetById('sd15', presets)!, presetById('wan22_14b_t2v', presets)!);
    expect(getAt(doc, procPath('model', 'model_kwargs', 'train_high_noise'))).toBeUndefined();
    expect(getAt(doc, procPath('sample', 'num_frames'))).toBe(1);
    expect(getAt(doc, procPath('train', 'noise_scheduler'))).toBe('ddpm');
    expect(getAt(doc, procPath('model', 'name_or_path'))).toBe('stable-diffusion-v1-5/stable-diffusion-v1-5');
    expect(getAt(doc, procPath('train', 'steps'))).toBe(1234);
  });

  it('an arch shared by two families resolves by base model (zimage = Turbo with the Turbo weights)', () => {
    expect(familyFor({ arch: 'zimage', name_or_path: 'Tongyi-MAI/Z-Image-Turbo' }, presets)?.family).toBe('zimage_turbo');
    expect(familyFor({ arch: 'zimage', name_or_path: '/models/other' }, presets)?.family).toBe('zimage');
    expect(familyFor({ is_xl: true, name_or_path: 'x' }, presets)?.family).toBe('sdxl');
  });
});

describe('saving', () => {
  it('writes config.yaml in the job folder atomically and registers a draft; saving again updates it', () => {
    let doc = newJobDoc(presets[0]!, 'output', 'atomic_job');
    doc = setAt(doc, procPath('datasets', 0, 'folder_path'), '/data/x');
    const saved = saveJob(doc, presets, store);
    expect(saved.configPath).toBe(join(home, 'output', 'atomic_job', 'config.yaml'));
    expect(jobFolder(doc, home)).toBe(join(home, 'output', 'atomic_job'));
    expect(parseJobYaml(readFileSync(saved.configPath, 'utf8'))).toEqual(doc);
    expect(readdirSync(join(home, 'output', 'atomic_job'))).toEqual(['config.yaml']); // no temp file left
    const again = saveJob(setAt(doc, procPath('train', 'steps'), 10), presets, store);
    expect(again.job.id).toBe(saved.job.id);
    expect(store.listJobs()).toHaveLength(1);
  });

  it('a job that has run is saved again only to raise its steps (then resume trains on); its comments stay', () => {
    let doc = newJobDoc(presets[0]!, 'output', 'ran_job');
    doc = setAt(doc, procPath('datasets', 0, 'folder_path'), '/data/x');
    const saved = saveJob(doc, presets, store);
    writeFileSync(saved.configPath, `# my notes\n${readFileSync(saved.configPath, 'utf8')}`);
    writeFileSync(join(home, 'output', 'ran_job', 'metrics.jsonl'), `${JSON.stringify({ event: 'end', status: 'finished', step: 300 })}\n`);
    store.db.prepare("UPDATE jobs SET state = 'finished' WHERE id = ?").run(saved.job.id);
    const steps = getAt(doc, procPath('train', 'steps'));
    expect(() => saveJob(setAt(doc, procPath('train', 'lr'), 0.5), presets, store)).toThrow('has run (finished): its config can only be extended by raising Steps');
    expect(() => saveJob(setAt(doc, procPath('train', 'steps'), 200), presets, store)).toThrow('has trained 300 steps: raise Steps above 300');
    const ext = saveJob(setAt(doc, procPath('train', 'steps'), 900), presets, store);
    expect(ext.extendedFrom).toBe(300);
    const text = readFileSync(saved.configPath, 'utf8');
    expect(text.startsWith('# my notes\n')).toBe(true);
    expect(getAt(parseJobYaml(text), procPath('train', 'steps'))).toBe(900);
    expect(steps).not.toBe(900);
    expect(store.job(saved.job.id)!.state).toBe('finished'); // resume (r) queues it
  });

  it('refuses to save an invalid job and writes nothing', () => {
    const doc = newJobDoc(presets[0]!, 'output', 'bad job name');
    expect(() => saveJob(doc, presets, store)).toThrow(SaveRefused);
    expect(existsSync(join(home, 'output'))).toBe(false);
    expect(store.listJobs()).toEqual([]);
  });

  it('writeFileAtomic replaces a file whole', () => {
    const f = join(home, 'a', 'b.yaml');
    writeFileAtomic(f, 'one');
    writeFileAtomic(f, 'two');
    expect(readFileSync(f, 'utf8')).toBe('two');
    expect(readdirSync(join(home, 'a'))).toEqual(['b.yaml']);
  });

  it('reports unreadable YAML with the file name', () => {
    expect(() => parseJobYaml('job: [unclosed', '/x/config.yaml')).toThrow(/\/x\/config.yaml: not valid YAML/);
    expect(() => loadJobFile(join(home, 'missing.yaml'))).toThrow(/no such file/);
  });
});
