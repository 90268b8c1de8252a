// A user's FLUX.1 job end to end on the CPU, with a small random FLUX.1-dev that graft-trainer writes in
// each real layout: served by the local Hub stand-in as a repo laid out as black-forest-labs/FLUX.1-dev is
// (diffusers folders and the BFL single files at its root), `graft run` with name_or_path set to the repo id
// downloads only the diffusers folders, prepares (CLIP and T5 tokens), encodes with the model's own CLIP,
// T5 and autoencoder, trains, samples and saves a LoRA with the diffusers/PEFT names. The same job from
// BFL's single file and from ComfyUI's folders (tokenizers from the Hub) trains with the same loss trace.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { safetensorsNames } from '../src/prepare/safetensorsNames.js';
import { FakeHub } from './helpers/hubServer.js';
import { graftAgainstHub, repoFiles } from './helpers/e2e.js';
import { tempDir, writeImage } from './helpers/dataset.js';

const TRAINER = process.env.GRAFT_TRAINER ?? resolve('trainer-cuda/build/graft-trainer');
const REPO = 'graft-test/FLUX.1-tiny-dev';
let hub: FakeHub;
let root: string;
let data: string;

beforeAll(async () => {
  root = tempDir('graft-flux-e2e-');
  for (const layout of ['bfl', 'comfyui']) {
    const r = spawnSync(TRAINER, ['make-random', 'flux-model', join(root, layout), '--layout', layout, '--shape', 'tiny', '--seed', '5'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  }
  hub = await new FakeHub().start();
  hub.add({ id: REPO, files: repoFiles(join(root, 'bfl')) });
  data = join(root, 'data');
  mkdirSync(data);
  for (let i = 0; i < 3; i++) {
    await writeImage(join(data, `${i}.png`), { width: 48, height: 40, left: [60 * i, 200, 120], right: [20, 40 * i, 200] });
    writeFileSync(join(data, `${i}.txt`), `a small picture, number ${i}`);
  }
});
afterAll(async () => {
  await hub?.stop();
  rmSync(root, { recursive: true, force: true });
});

function writeJob(name: string, model: Record<string, unknown>): string {
  const process = {
    type: 'diffusion_trainer', training_folder: join(root, 'out'), device: 'cpu', trigger_word: 'zxq',
    network: { type: 'lora', linear: 4, linear_alpha: 4 },
    save: { dtype: 'bf16', save_every: 1000, max_step_saves_to_keep: 1 },
    datasets: [{ folder_path: data, resolution: [32], caption_ext: 'txt' }],
    train: { steps: 4, batch_size: 2, lr: 0.001, optimizer: 'adamw', seed: 7 },
    model: { arch: 'flux', quantize: false, quantize_te: false, ...model },
    sample: { sample_every: 4, width: 32, height: 32, sample_steps: 2, guidance_scale: 3.5, prompts: ['[trigger] on a beach'] },
  };
  const file = join(root, `${name}.yaml`);
  writeFileSync(file, JSON.stringify({ job: 'extension', config: { name, process: [process] } }, null, 2));
  return file;
}

/** The built graft against the local Hub and a cache of this test's own (the server answers from this process). */
const graft = (args: string[], extraEnv: NodeJS.ProcessEnv = {}) => graftAgainstHub(hub.url, root, args, extraEnv);

const losses = (job: string) => readFileSync(join(root, 'out', job, 'metrics.jsonl'), 'utf8').trim().split('\n')
  .map((l) => JSON.parse(l) as { event: string; loss?: number }).filter((e) => e.event === 'step').map((e) => e.loss!);

describe('a FLUX.1-dev LoRA job', () => {
  let hubLosses: number[];

  it('from a Hub id: downloads the diffusers folders only, prepares, encodes, trains, samples and saves a PEFT-named LoRA', async () => {
    const r = await graft(['run', writeJob('hub', { name_or_path: REPO })]);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`hub: ${REPO}@main \\(commit [0-9a-f]{12}\\): \\d+ file\\(s\\), 0 in the cache`));
    expect(r.stdout).toContain('hub: done transformer/diffusion_pytorch_model-00001-of-00003.safetensors');
    // The BFL single files at the repo's root are never asked for.
    for (const f of ['flux1-dev.safetensors', 'ae.safetensors']) expect(hub.fetched(f).concat(hub.fetched(f, 'HEAD')), f).toEqual([]);

    const job = JSON.parse(readFileSync(join(root, 'out', 'hub', 'job.json'), 'utf8'));
    const snapshot = join(root, 'hf-cache', 'models--graft-test--FLUX.1-tiny-dev', 'snapshots');
    expect(job.model.transformer.startsWith(snapshot)).toBe(true);
    expect(Object.keys(job.model.text_encoders)).toEqual(['clip_l', 't5']);
    expect(job.text.encoders).toEqual({ clip_l: { max_len: 77 }, t5: { max_len: 512 } });
    // FLUX.1-dev: trained at guidance 1, sampled with the job's guidance_scale in its guidance embedding, no CFG.
    expect([job.train.guidance, job.sample.guidance, job.sample.guidance_scale, job.sample.shift]).toEqual([1, 3.5, 1, 'resolution']);

    hubLosses = losses('hub');
    expect(hubLosses).toHaveLength(4);
    expect(hubLosses.every((l) => Number.isFinite(l) && l > 0)).toBe(true);
    const names = safetensorsNames(join(root, 'out', 'hub', 'hub.safetensors'));
    expect(names).toContain('transformer.transformer_blocks.0.attn.to_q.lora_A.weight');
    expect(names).toContain('transformer.transformer_blocks.1.ff_context.net.2.lora_B.weight');
    expect(names).toContain('transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight');
    expect(names.every((n) => /^transformer\.(single_)?transformer_blocks\.\d+\..+\.(lora_A|lora_B)\.weight$/.test(n)), names.join(' ')).toBe(true);
    const samples = readdirSync(join(root, 'out', 'hub', 'samples')).sort();
    expect(samples).toEqual(['000000000_0.png', '000000004_0.png']);
    // The sample drawn with the trained LoRA is another picture than the one before training.
    const [before, after] = samples.map((s) => readFileSync(join(root, 'out', 'hub', 'samples', s)));
    expect(before!.equals(after!)).toBe(false);
  }, 300_000);

  it('offline (HF_HUB_OFFLINE=1) the cached snapshot prepares again without a request', async () => {
    const asked = hub.requests.length;
    const r = await graft(['prepare', join(root, 'out', 'hub')], { HF_HUB_OFFLINE: '1' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(hub.requests.length).toBe(asked);
  }, 120_000);

  it('from BFL\'s single file, and from ComfyUI\'s folders with the tokenizers from the Hub: the same loss trace', async () => {
    const bfl = await graft(['run', writeJob('bfl', { name_or_path: join(root, 'bfl', 'flux1-dev.safetensors') })]);
    expect(bfl.status, bfl.stdout + bfl.stderr).toBe(0);
    const comfy = await graft(['run', writeJob('comfy', { name_or_path: join(root, 'comfyui', 'diffusion_models', 'flux1-dev.safetensors'), extras_name_or_path: REPO })]);
    expect(comfy.status, comfy.stdout + comfy.stderr).toBe(0);
    const job = JSON.parse(readFileSync(join(root, 'out', 'comfy', 'job.json'), 'utf8'));
    expect(job.model.text_encoders).toEqual({ clip_l: join(root, 'comfyui', 'text_encoders', 'clip_l.safetensors'), t5: join(root, 'comfyui', 'text_encoders', 't5xxl_fp16.safetensors') });
    expect(job.model.ae).toBe(join(root, 'comfyui', 'vae', 'ae.safetensors'));
    expect(job.model.tokenizers.t5.startsWith(join(root, 'hf-cache'))).toBe(true);
    for (const trace of [losses('bfl'), losses('comfy')]) {
      expect(trace).toHaveLength(hubLosses.length);
      trace.forEach((l, i) => expect(l).toBeCloseTo(hubLosses[i]!, 5));
    }
  }, 300_000);

  it('a missing part is one line naming it and where graft looked', async () => {
    const r = await graft(['prepare', writeJob('broken', { name_or_path: join(root, 'comfyui', 'diffusion_models', 'flux1-dev.safetensors') })]);
    // Everything is beside the file here; only the tokenizers come from the Hub, and the default repo is not served.
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain("graft: FLUX.1's tokenizers come from black-forest-labs/FLUX.1-schnell (model.extras_name_or_path, by default)");
    const gone = await graft(['prepare', writeJob('gone', { name_or_path: join(root, 'nowhere', 'flux1-dev.safetensors') })]);
    expect(gone.status).toBe(1);
    expect(gone.stderr).toContain(`no such file or folder (${join(root, 'nowhere', 'flux1-dev.safetensors')}), and not a Hub id (org/name)`);
    expect(existsSync(join(root, 'out', 'gone', 'job.json'))).toBe(false);
  }, 120_000);
});
