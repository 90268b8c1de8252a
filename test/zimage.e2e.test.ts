// A user's Z-Image Turbo job end to end on the CPU, with a small random Z-Image that graft-trainer writes
// in the real layouts: served by the local Hub stand-in as a repo laid out as Tongyi-MAI/Z-Image-Turbo is,
// `graft run` with name_or_path set to the repo id downloads its diffusers folders, prepares (the chat
// template through the model's tokenizer), encodes with the model's own Qwen3 and autoencoder, trains,
// samples and saves a LoRA with the reference toolkit's "diffusion_model." names; the same job from
// ComfyUI's folders trains with the same losses; a run stopped at step 2 and run again ends where an
// uninterrupted one does; and a de-distillation adapter from the Hub (assistant_lora_path) is merged.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { safetensorsNames } from '../src/prepare/safetensorsNames.js';
import { FakeHub } from './helpers/hubServer.js';
import { graftAgainstHub, repoFiles } from './helpers/e2e.js';
import { tempDir, writeImage } from './helpers/dataset.js';

const TRAINER = process.env.GRAFT_TRAINER ?? resolve('trainer-cuda/build/graft-trainer');
const REPO = 'graft-test/Z-Image-tiny-Turbo';
const ADAPTER = 'graft-test/zimage-tiny-adapter';
let hub: FakeHub;
let root: string;
let data: string;

beforeAll(async () => {
  root = tempDir('graft-zimage-e2e-');
  for (const layout of ['diffusers', 'comfyui']) {
    const r = spawnSync(TRAINER, ['make-random', 'zimage-model', join(root, layout), '--layout', layout, '--shape', 'tiny', '--seed', '5'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  }
  hub = await new FakeHub().start();
  hub.add({ id: REPO, files: repoFiles(join(root, 'diffusers')) });
  data = join(root, 'data');
  mkdirSync(data);
  for (let i = 0; i < 3; i++) {
    await writeImage(join(data, `${i}.png`), { width: 48, height: 40, left: [60 * i, 200, 120], right: [20, 40 * i, 200] });
    // Captions of different lengths: Qwen3's hidden states are as long as each prompt.
    writeFileSync(join(data, `${i}.txt`), `a small picture${' with a red star'.repeat(i)}, number ${i}`);
  }
});
afterAll(async () => {
  await hub?.stop();
  rmSync(root, { recursive: true, force: true });
});

function writeJob(file: string, name: string, model: Record<string, unknown>, steps = 4, folder = 'out'): string {
  const process = {
    type: 'diffusion_trainer', training_folder: join(root, folder), device: 'cpu', trigger_word: 'zxq',
    network: { type: 'lora', linear: 4, linear_alpha: 4 },
    save: { dtype: 'fp32', save_every: 1000, max_step_saves_to_keep: 1 },
    datasets: [{ folder_path: data, resolution: [32], caption_ext: 'txt' }],
    train: { steps, batch_size: 2, lr: 0.001, optimizer: 'adamw', seed: 7 },
    model: { arch: 'zimage:turbo', quantize: false, quantize_te: false, ...model },
    sample: { sample_every: 4, width: 32, height: 32, sample_steps: 2, prompts: ['[trigger] on a beach'] },
  };
  const path = join(root, `${file}.yaml`);
  writeFileSync(path, JSON.stringify({ job: 'extension', config: { name, process: [process] } }, null, 2));
  return path;
}

/** The built graft against the local Hub and a cache of this test's own. */
const graft = (args: string[]) => graftAgainstHub(hub.url, root, args);

const losses = (dir: string) => readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n')
  .map((l) => JSON.parse(l) as { event: string; loss?: number }).filter((e) => e.event === 'step').map((e) => e.loss!);

describe('a Z-Image Turbo LoRA job', () => {
  let hubLosses: number[];

  it('from a Hub id: downloads the diffusers folders, prepares through the chat template, encodes, trains, samples, saves the reference names', async () => {
    const r = await graft(['run', writeJob('hub', 'hub', { name_or_path: REPO })]);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`hub: ${REPO}@main \\(commit [0-9a-f]{12}\\): \\d+ file\\(s\\), 0 in the cache`));
    const job = JSON.parse(readFileSync(join(root, 'out', 'hub', 'job.json'), 'utf8'));
    expect([job.model.arch, job.model.variant, Object.keys(job.model.text_encoders)]).toEqual(['zimage', 'turbo', ['qwen3']]);
    expect(job.text.encoders.qwen3.max_len).toBe(512);
    // Each caption through the chat: <|im_start|>user ... <|im_end|> ... then padding to 512.
    const pad = job.text.encoders.qwen3.pad_id as number;
    const tokens = job.datasets[0].items.map((it: { tokens: { qwen3: number[] } }) => it.tokens.qwen3);
    const lengths = tokens.map((t: number[]) => t.findIndex((id) => id === pad));
    expect(new Set(lengths).size).toBe(3);
    expect(tokens.every((t: number[]) => t[0] === pad + 1)).toBe(true);  // <|im_start|>
    // Turbo: the preset's sampling (no CFG), Z-Image's static shift 3 in training and sampling.
    expect([job.sample.guidance_scale, job.sample.shift, job.train.timestep_shift]).toEqual([1, 3, 3]);

    hubLosses = losses(join(root, 'out', 'hub'));
    expect(hubLosses).toHaveLength(4);
    expect(hubLosses.every((l) => Number.isFinite(l) && l > 0)).toBe(true);
    const names = safetensorsNames(join(root, 'out', 'hub', 'hub.safetensors'));
    expect(names).toContain('diffusion_model.layers.0.attention.to_q.lora_A.weight');
    expect(names).toContain('diffusion_model.layers.1.attention.to_out.0.lora_B.weight');
    expect(names).toContain('diffusion_model.layers.1.adaLN_modulation.0.lora_A.weight');
    expect(names.every((n) => /^diffusion_model\.layers\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123]|adaLN_modulation\.0)\.lora_[AB]\.weight$/.test(n)), names.join(' ')).toBe(true);
    const samples = readdirSync(join(root, 'out', 'hub', 'samples')).sort();
    expect(samples).toEqual(['000000000_0.png', '000000004_0.png']);
    const [before, after] = samples.map((s) => readFileSync(join(root, 'out', 'hub', 'samples', s)));
    expect(before!.equals(after!)).toBe(false);
  }, 300_000);

  it('from ComfyUI\'s folders, the tokenizer and the encoder\'s config from the Hub repo: the same losses', async () => {
    const comfy = join(root, 'comfyui', 'diffusion_models', 'z_image_turbo_bf16.safetensors');
    const r = await graft(['run', writeJob('comfy', 'comfy', { name_or_path: comfy, extras_name_or_path: REPO })]);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const job = JSON.parse(readFileSync(join(root, 'out', 'comfy', 'job.json'), 'utf8'));
    expect(job.model.text_encoders).toEqual({ qwen3: join(root, 'comfyui', 'text_encoders', 'qwen_3_4b.safetensors') });
    expect(job.model.text_encoder_config.startsWith(join(root, 'hf-cache'))).toBe(true);
    const trace = losses(join(root, 'out', 'comfy'));
    expect(trace).toHaveLength(hubLosses.length);
    trace.forEach((l, i) => expect(l).toBeCloseTo(hubLosses[i]!, 5));
  }, 300_000);

  it('stopped after 2 steps and run again to 4: the LoRA of an uninterrupted run, byte for byte', async () => {
    const model = { name_or_path: REPO };
    const whole = await graft(['run', writeJob('whole', 'same', model, 4, 'whole')]);
    expect(whole.status, whole.stdout + whole.stderr).toBe(0);
    const first = await graft(['run', writeJob('parts', 'same', model, 2, 'parts')]);
    expect(first.status, first.stdout + first.stderr).toBe(0);
    const rest = await graft(['run', writeJob('parts', 'same', model, 4, 'parts')]);
    expect(rest.status, rest.stdout + rest.stderr).toBe(0);
    expect(rest.stdout).toContain("resuming 'same'");
    expect(losses(join(root, 'parts', 'same'))).toEqual(losses(join(root, 'whole', 'same')));
    // The tensors byte for byte (the metadata holds each config, whose training_folder differs).
    const tensors = (folder: string) => {
      const buf = readFileSync(join(root, folder, 'same', 'same.safetensors'));
      const n = Number(buf.readBigUInt64LE(0));
      const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
      delete header.__metadata__;
      return { header, data: buf.subarray(8 + n) };
    };
    const [a, b] = [tensors('parts'), tensors('whole')];
    expect(a.header).toEqual(b.header);
    expect(a.data.equals(b.data)).toBe(true);
  }, 300_000);

  it('with a de-distillation adapter from the Hub (assistant_lora_path owner/repo/file): merged for training, named in the log', async () => {
    // A LoRA in the reference's names for this model: the one the first job trained.
    hub.add({ id: ADAPTER, files: { 'adapter.safetensors': readFileSync(join(root, 'out', 'hub', 'hub.safetensors')) } });
    const r = await graft(['run', writeJob('assisted', 'assisted', { name_or_path: REPO, assistant_lora_path: `${ADAPTER}/adapter.safetensors` })]);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const job = JSON.parse(readFileSync(join(root, 'out', 'assisted', 'job.json'), 'utf8'));
    expect(job.model.assistant_lora.startsWith(join(root, 'hf-cache'))).toBe(true);
    expect(r.stdout).toMatch(/assistant adapter .*adapter\.safetensors merged into the transformer/);
    const trace = losses(join(root, 'out', 'assisted'));
    expect(trace).toHaveLength(4);
    expect(trace[0]).not.toBeCloseTo(hubLosses[0]!, 6);  // training sees the merged model
  }, 300_000);
});
