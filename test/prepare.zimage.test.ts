// Where a Z-Image job's files come from (src/prepare/zimageModel.ts), for each thing a user may name in
// model.name_or_path: a diffusers folder, a Hub id (served by the local Hub stand-in, only the needed
// folders fetched), ComfyUI's single transformer file with its parts beside it and the tokenizer (and the
// text encoder's config.json) from model.extras_name_or_path; the assistant LoRA; and the job.json that
// `graft prepare` writes for it. Folders are written by test/helpers/zimage.ts (tensor names only), and by the
// trainer's make-random zimage-model (its real layouts, as the trainer reads them).
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PrepareError } from '../src/prepare/errors.js';
import { resolveModel, type ModelFiles } from '../src/prepare/model.js';
import { prepareJob } from '../src/prepare/prepare.js';
import { loadPresets, presetById } from '../src/presets.js';
import { TRAINER } from './helpers/daemon.js';
import { tempDir, writeImage } from './helpers/dataset.js';
import { FakeHub } from './helpers/hubServer.js';
import { repoFiles } from './helpers/e2e.js';
import { makeTokenizers } from './helpers/tokenizers.js';
import { AE, makeZImageComfy, makeZImageDiffusers, QWEN3, writeNames } from './helpers/zimage.js';

const presets = loadPresets();
const turbo = presetById('zimage_turbo', presets)!;
const base = presetById('zimage', presets)!;
let root: string;
let config: string;
let diffusers: string;

beforeAll(() => {
  root = tempDir('graft-prepare-zimage-');
  config = join(root, 'job.yaml');
  diffusers = makeZImageDiffusers(join(root, 'Z-Image-Turbo'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

// Offline, with a cache of its own: nothing here may reach a Hub, nor find this machine's models.
const offline = () => ({ offline: true, env: { HF_HUB_CACHE: join(root, 'hf-cache') } });
const model = (nameOrPath: string, extra: Record<string, unknown> = {}, preset = turbo) =>
  resolveModel(preset, { arch: preset.arch, name_or_path: nameOrPath, ...extra }, config, offline());
const tokenizerJson = (m: ModelFiles) => ('tokenizerJson' in m.tokenizers[0]!.source ? m.tokenizers[0]!.source.tokenizerJson : '');

describe('Z-Image model files', () => {
  it('a diffusers folder: transformer/, text_encoder/ (qwen3), vae/, the Qwen tokenizer at 512 with the chat; Turbo from the folder name', async () => {
    const m = await model(diffusers, {}, base);
    expect(m).toMatchObject({
      arch: 'zimage', variant: 'turbo', folder: diffusers, transformer: join(diffusers, 'transformer'), ae: join(diffusers, 'vae'),
      textEncoders: { qwen3: join(diffusers, 'text_encoder') },
      traits: { variant: 'turbo', guidanceEmbedding: false, classifierFree: true, sampleShift: 3, trainShift: 3, sampleDefaults: { sample_steps: 8, guidance_scale: 1 } },
    });
    expect(m).not.toHaveProperty('textEncoderConfig');
    expect(m).not.toHaveProperty('assistantLora');
    expect(m.tokenizers).toEqual([{
      name: 'qwen3', kind: 'qwen', maxLen: 512, maxLenFrom: "ZImagePipeline's max_sequence_length", chat: { enableThinking: true }, masksPadding: true,
      source: { tokenizerJson: join(diffusers, 'tokenizer', 'tokenizer.json'), tokenizerConfig: join(diffusers, 'tokenizer', 'tokenizer_config.json') },
    }]);
  });

  it('the variant: turbo for arch zimage:turbo or a name saying Turbo, else base (30 steps, CFG 4)', async () => {
    const plain = join(root, 'Z-Image');
    makeZImageDiffusers(plain);
    const b = await model(plain, { arch: 'zimage' }, base);
    expect([b.variant, b.traits?.sampleDefaults]).toEqual(['base', { sample_steps: 30, guidance_scale: 4 }]);
    expect((await model(plain, { arch: 'zimage:turbo' })).variant).toBe('turbo');
    // A Hub snapshot named as a folder: the repo's name is in the cache path.
    const snap = join(root, 'hf', 'models--Tongyi-MAI--Z-Image-Turbo', 'snapshots', 'abc123');
    makeZImageDiffusers(snap);
    expect((await model(snap, { arch: 'zimage' }, base)).variant).toBe('turbo');
  });

  it('a folder of another pipeline, or one lacking parts, is named with what it lacks', async () => {
    const flux = join(root, 'flux-like');
    makeZImageDiffusers(flux, { pipeline: 'FluxPipeline' });
    await expect(model(flux)).rejects.toThrow(new PrepareError(`${join(flux, 'model_index.json')}: _class_name is FluxPipeline, not ZImagePipeline: ${flux} is not a Z-Image folder`));
    const partial = join(root, 'partial');
    makeZImageDiffusers(partial);
    rmSync(join(partial, 'vae', 'diffusion_pytorch_model.safetensors'));
    rmSync(join(partial, 'text_encoder', 'config.json'));
    rmSync(join(partial, 'tokenizer'), { recursive: true });
    await expect(model(partial)).rejects.toThrow(new PrepareError(`${partial}: this Z-Image diffusers folder lacks vae/ (diffusion_pytorch_model.safetensors or its sharded index), ` +
      "text_encoder/config.json (the Qwen3 text encoder's shape), tokenizer/ (tokenizer.json, tokenizer_config.json): " +
      "complete it from the model's Hub repo (graft download Tongyi-MAI/Z-Image-Turbo), or name the Hub id as model.name_or_path"));
    const noConfig = join(root, 'no-tok-config');
    makeZImageDiffusers(noConfig);
    rmSync(join(noConfig, 'tokenizer', 'tokenizer_config.json'));
    await expect(model(noConfig)).rejects.toThrow(`tokenizer_config.json is missing from ${join(noConfig, 'tokenizer')} (Z-Image's Qwen3 tokenizer: tokenizer.json and tokenizer_config.json)`);
  });

  it('ComfyUI\'s folders: text_encoders/qwen_3_4b.safetensors and vae/ae.safetensors beside diffusion_models/; tokenizer and encoder config from extras_name_or_path', async () => {
    const comfy = join(root, 'comfy');
    const file = makeZImageComfy(comfy);
    const m = await model(file, { extras_name_or_path: diffusers });
    expect(m).toMatchObject({
      arch: 'zimage', variant: 'turbo', transformer: file, ae: join(comfy, 'vae', 'ae.safetensors'),
      textEncoders: { qwen3: join(comfy, 'text_encoders', 'qwen_3_4b.safetensors') },
      // A single-file text encoder carries no shape: the extras folder's config.json gives it.
      textEncoderConfig: join(diffusers, 'text_encoder', 'config.json'),
    });
    expect(tokenizerJson(m)).toBe(join(diffusers, 'tokenizer', 'tokenizer.json'));
    // bf16 before fp8; the folder named instead of the file: its one z_image*.safetensors.
    writeNames(join(comfy, 'text_encoders', 'qwen_3_4b_fp8_scaled.safetensors'), QWEN3);
    expect((await model(join(comfy, 'diffusion_models'), { extras_name_or_path: diffusers })).textEncoders.qwen3).toBe(join(comfy, 'text_encoders', 'qwen_3_4b.safetensors'));
    rmSync(join(comfy, 'text_encoders', 'qwen_3_4b.safetensors'));
    expect((await model(file, { extras_name_or_path: diffusers })).textEncoders.qwen3).toBe(join(comfy, 'text_encoders', 'qwen_3_4b_fp8_scaled.safetensors'));
  });

  it('a part that is nowhere: named with the folders looked in; extras_name_or_path supplies it (its diffusers folder, no config needed)', async () => {
    const comfy = join(root, 'comfy-no-te');
    const file = makeZImageComfy(comfy, { encoder: false });
    await expect(model(file)).rejects.toThrow(new PrepareError(
      `${file}: the Qwen3 text encoder (qwen_3_4b.safetensors) is not beside this Z-Image transformer (looked in ${join(comfy, 'diffusion_models')}, ${join(comfy, 'vae')}, ${comfy}): ` +
      'put it there, or set model.extras_name_or_path to a Z-Image diffusers folder or Hub id (Tongyi-MAI/Z-Image-Turbo) to take it from'));
    const m = await model(file, { extras_name_or_path: diffusers });
    expect(m.textEncoders).toEqual({ qwen3: join(diffusers, 'text_encoder') });
    expect(m.ae).toBe(join(comfy, 'vae', 'ae.safetensors'));
    expect(m).not.toHaveProperty('textEncoderConfig');
    // An extras folder without the encoder's config, for a single-file encoder.
    const bare = join(root, 'extras-bare');
    makeTokenizers(join(bare, 'tokenizer'), 'qwen');
    const withTe = makeZImageComfy(join(root, 'comfy-2'));
    await expect(model(withTe, { extras_name_or_path: bare })).rejects.toThrow(new PrepareError(
      `${bare} (model.extras_name_or_path) has no text_encoder/config.json: the single-file text encoder ${join(root, 'comfy-2', 'text_encoders', 'qwen_3_4b.safetensors')} carries no shape, and it is read from there`));
    await expect(model(file, { extras_name_or_path: bare })).rejects.toThrow(`${file}: the Qwen3 text encoder (qwen_3_4b.safetensors) is neither beside it`);
    await expect(model(withTe, { extras_name_or_path: join(root, 'nope') })).rejects.toThrow(`model.extras_name_or_path "${join(root, 'nope')}": no such folder`);
  });

  it('the trainer\'s own random Z-Image models (graft-trainer make-random zimage-model) resolve in both layouts', async () => {
    const made = join(root, 'random');
    for (const layout of ['diffusers', 'comfyui']) {
      const r = spawnSync(TRAINER, ['make-random', 'zimage-model', join(made, layout), '--layout', layout, '--shape', 'tiny'], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
    }
    const d = await model(join(made, 'diffusers'));
    expect(d).toMatchObject({ transformer: join(made, 'diffusers', 'transformer'), textEncoders: { qwen3: join(made, 'diffusers', 'text_encoder') }, ae: join(made, 'diffusers', 'vae') });
    const file = join(made, 'comfyui', 'diffusion_models', 'z_image_turbo_bf16.safetensors');
    const c = await model(file, { extras_name_or_path: join(made, 'diffusers') });
    expect(c).toMatchObject({
      variant: 'turbo', transformer: file, ae: join(made, 'comfyui', 'vae', 'ae.safetensors'),
      textEncoders: { qwen3: join(made, 'comfyui', 'text_encoders', 'qwen_3_4b.safetensors') }, textEncoderConfig: join(made, 'diffusers', 'text_encoder', 'config.json'),
    });
  });

  it('a file that is not a Z-Image transformer is named with its first tensors; the ComfyUI prefix with fused attention is one', async () => {
    const flux = join(root, 'flux1-dev.safetensors');
    writeNames(flux, ['double_blocks.0.img_attn.qkv.weight', 'img_in.weight']);
    await expect(model(flux, { extras_name_or_path: diffusers })).rejects.toThrow(new PrepareError(
      `${flux} is not a Z-Image transformer: it has no cap_embedder.1.weight or context_refiner.0.* (nor ComfyUI's model.diffusion_model.layers.0.attention.qkv.weight); its first tensors are double_blocks.0.img_attn.qkv.weight, img_in.weight`));
    const dir = join(root, 'prefixed');
    writeNames(join(dir, 'z_image_bf16.safetensors'), ['model.diffusion_model.layers.0.attention.qkv.weight', 'model.diffusion_model.x_embedder.weight']);
    writeNames(join(dir, 'ae.safetensors'), AE);
    writeNames(join(dir, 'qwen_3_4b.safetensors'), QWEN3);
    const m = await model(dir, { extras_name_or_path: diffusers }, base);
    expect([m.transformer, m.variant]).toEqual([join(dir, 'z_image_bf16.safetensors'), 'base']);
    await expect(model(join(diffusers, 'model_index.json'))).rejects.toThrow('model_index.json is not a .safetensors file');
    await expect(model(join(root, 'missing'))).rejects.toThrow(`no such file or folder (${join(root, 'missing')}), and not a Hub id (org/name)`);
  });

  it('the assistant LoRA: a local file (relative to the config), else owner/repo/file on the Hub; anything else is named', async () => {
    const lora = join(root, 'adapters', 'adapter.safetensors');
    writeNames(lora, ['diffusion_model.layers.0.attention.to_k.lora_A.weight']);
    expect((await model(diffusers, { assistant_lora_path: 'adapters/adapter.safetensors' })).assistantLora).toBe(lora);
    expect((await model(diffusers, { assistant_lora_path: lora })).assistantLora).toBe(lora);
    const where = `${config}: config.process[0].model.assistant_lora_path`;
    await expect(model(diffusers, { assistant_lora_path: 'adapters/gone.safetensors' })).rejects.toThrow(new PrepareError(
      `${where} "adapters/gone.safetensors": no such file (${join(root, 'adapters', 'gone.safetensors')}), and not a file of a Hub repo (owner/repo/file.safetensors)`));
    await expect(model(diffusers, { assistant_lora_path: 'adapters' })).rejects.toThrow(`${where} "adapters": ${join(root, 'adapters')} is a folder`);
    await expect(model(diffusers, { assistant_lora_path: 'owner/repo/adapter.bin' })).rejects.toThrow(`${where} "owner/repo/adapter.bin": adapter.bin is not a .safetensors file`);
    // On the Hub and not in this (offline) cache.
    await expect(model(diffusers, { assistant_lora_path: 'ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors' })).rejects.toThrow(/offline/);
  });
});

describe('Z-Image from the Hub (the local Hub stand-in)', () => {
  const REPO = 'Tongyi-MAI/Z-Image-Turbo';
  const ADAPTER = 'ostris/zimage_turbo_training_adapter';
  let hub: FakeHub;
  let commit: string;
  let cache: string;

  beforeAll(async () => {
    hub = await new FakeHub().start();
    // The repo's diffusers folders, and what it (or a repo like it) also holds that training never needs.
    commit = hub.add({
      id: REPO,
      files: {
        ...repoFiles(diffusers), 'README.md': '# Z-Image-Turbo\n', '.gitattributes': '*.safetensors filter=lfs\n', 'assets/showcase.jpg': Buffer.alloc(20_000, 7),
        'z_image_turbo_bf16.safetensors': Buffer.alloc(30_000, 1), 'text_encoder/pytorch_model.bin': Buffer.alloc(30_000, 2),
      },
    }).commit;
    const adapter = join(root, 'adapter-repo');
    writeNames(join(adapter, 'zimage_turbo_training_adapter_v2.safetensors'), ['diffusion_model.layers.0.attention.to_k.lora_A.weight']);
    writeNames(join(adapter, 'zimage_turbo_training_adapter_v1.safetensors'), ['diffusion_model.layers.0.attention.to_k.lora_A.weight']);
    hub.add({ id: ADAPTER, files: { ...repoFiles(adapter), 'README.md': 'adapter\n' } });
    cache = join(root, 'hub-cache');
  });
  afterAll(async () => hub?.stop());

  const online = (preset = turbo, extra: Record<string, unknown> = {}, nameOrPath = REPO) =>
    resolveModel(preset, { arch: preset.arch, name_or_path: nameOrPath, ...extra }, config, { env: { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, HF_HOME: join(root, 'hf-home') } });
  /** The repo paths graft asked the Hub about (HEAD or GET through resolve), since `from` requests. */
  const asked = (repo: string, from = 0) => [...new Set(hub.requests.slice(from).filter((q) => q.path.startsWith(`/${repo}/resolve/`)).map((q) => q.path.split(/\/resolve\/[0-9a-f]{40}\//)[1]!))].sort();

  it('a Hub id: only the diffusers folders ZImagePipeline reads are fetched; never the root single file, pickles, pictures or docs', async () => {
    const m = await online();
    const snapshot = join(cache, 'models--Tongyi-MAI--Z-Image-Turbo', 'snapshots', commit);
    expect(m).toMatchObject({ arch: 'zimage', variant: 'turbo', transformer: join(snapshot, 'transformer'), textEncoders: { qwen3: join(snapshot, 'text_encoder') }, ae: join(snapshot, 'vae') });
    expect(asked(REPO)).toEqual(Object.keys(repoFiles(diffusers)).filter((f) => f !== 'text_encoder/generation_config.json').sort());
    for (const f of ['z_image_turbo_bf16.safetensors', 'text_encoder/pytorch_model.bin', 'assets/showcase.jpg', 'README.md']) expect(hub.fetched(f).concat(hub.fetched(f, 'HEAD')), f).toEqual([]);
  });

  it('a single file with its parts beside: from the extras repo only the tokenizer, model_index.json and text_encoder/config.json', async () => {
    const file = makeZImageComfy(join(root, 'comfy-hub'));
    const from = hub.requests.length;
    rmSync(cache, { recursive: true, force: true });
    const m = await online(turbo, { extras_name_or_path: REPO }, file);
    const snapshot = join(cache, 'models--Tongyi-MAI--Z-Image-Turbo', 'snapshots', commit);
    expect(m).toMatchObject({ transformer: file, textEncoderConfig: join(snapshot, 'text_encoder', 'config.json') });
    expect(tokenizerJson(m)).toBe(join(snapshot, 'tokenizer', 'tokenizer.json'));
    expect(asked(REPO, from)).toEqual(['model_index.json', 'text_encoder/config.json', 'tokenizer/merges.txt', 'tokenizer/tokenizer.json', 'tokenizer/tokenizer_config.json', 'tokenizer/vocab.json']);
    // The default extras repo is the same one: nothing more is asked for.
    const again = hub.requests.length;
    expect((await online(turbo, {}, file)).textEncoderConfig).toBe(join(snapshot, 'text_encoder', 'config.json'));
    expect(asked(REPO, again)).toEqual([]);
    // The text encoder missing beside it: extras' text_encoder/ folder is fetched too, shards and all.
    const noTe = makeZImageComfy(join(root, 'comfy-hub-no-te'), { encoder: false });
    const before = hub.requests.length;
    expect((await online(turbo, { extras_name_or_path: REPO }, noTe)).textEncoders.qwen3).toBe(join(snapshot, 'text_encoder'));
    expect(asked(REPO, before)).toEqual(['text_encoder/model-00001-of-00002.safetensors', 'text_encoder/model-00002-of-00002.safetensors', 'text_encoder/model.safetensors.index.json']);
  });

  it('the assistant LoRA as owner/repo/file: that file alone is downloaded into the cache', async () => {
    const from = hub.requests.length;
    const m = await online(turbo, { assistant_lora_path: `${ADAPTER}/zimage_turbo_training_adapter_v2.safetensors` });
    expect(m.assistantLora).toMatch(new RegExp(`^${cache}/models--ostris--zimage_turbo_training_adapter/snapshots/[0-9a-f]{40}/zimage_turbo_training_adapter_v2\\.safetensors$`));
    expect(asked(ADAPTER, from)).toEqual(['zimage_turbo_training_adapter_v2.safetensors']);
    await expect(online(turbo, { assistant_lora_path: `${ADAPTER}/nope.safetensors` })).rejects.toThrow(
      `${config}: config.process[0].model.assistant_lora_path "${ADAPTER}/nope.safetensors": `);
  });
});

describe('graft prepare for Z-Image: job.json', () => {
  let data: string;
  beforeAll(async () => {
    data = join(root, 'data');
    mkdirSync(data);
    await writeImage(join(data, 'a.png'), { width: 40, height: 36 });
    writeFileSync(join(data, 'a.txt'), 'a red star on a blue background');
  });

  async function prepare(name: string, model: Record<string, unknown>, more: { sample?: Record<string, unknown>; train?: Record<string, unknown> } = {}) {
    const process = {
      type: 'diffusion_trainer', training_folder: join(root, 'out'), device: 'cpu', trigger_word: 'zxq',
      network: { type: 'lora', linear: 4, linear_alpha: 4 },
      datasets: [{ folder_path: data, resolution: [32], caption_ext: 'txt' }],
      train: { steps: 4, batch_size: 1, lr: 0.0001, optimizer: 'adamw', ...more.train },
      model: { quantize: false, quantize_te: false, ...model },
      sample: { sample_every: 250, width: 32, height: 32, prompts: ['[trigger] on a beach'], ...more.sample },
    };
    const file = join(root, `${name}.yaml`);
    writeFileSync(file, JSON.stringify({ job: 'extension', config: { name, process: [process] } }, null, 2));
    await prepareJob(file, { home: join(root, 'home'), concurrency: 2 });
    return JSON.parse(readFileSync(join(root, 'out', name, 'job.json'), 'utf8'));
  }

  it('Turbo: the model\'s parts, qwen3 tokens keyed by encoder, pad id, Turbo\'s sampling (8 steps, no CFG), the static shift 3', async () => {
    const lora = join(root, 'adapters', 'adapter.safetensors');
    const job = await prepare('zt', { arch: 'zimage:turbo', name_or_path: diffusers, assistant_lora_path: lora });
    expect(job.model).toEqual({
      arch: 'zimage', name_or_path: diffusers, variant: 'turbo', transformer: join(diffusers, 'transformer'),
      text_encoders: { qwen3: join(diffusers, 'text_encoder') }, ae: join(diffusers, 'vae'),
      tokenizers: { qwen3: join(diffusers, 'tokenizer', 'tokenizer.json') }, assistant_lora: lora,
    });
    const padId = JSON.parse(readFileSync(join(diffusers, 'tokenizer', 'tokenizer_config.json'), 'utf8')).added_tokens_decoder;
    const pad = Number(Object.entries(padId as Record<string, { content: string }>).find(([, t]) => t.content === '<|endoftext|>')![0]);
    expect(job.text.encoders).toEqual({ qwen3: { max_len: 512, pad_id: pad } });
    expect(Object.keys(job.text.empty_tokens)).toEqual(['qwen3']);
    const item = job.datasets[0].items[0];
    expect(item.caption).toBe('zxq, a red star on a blue background');
    for (const field of [item.tokens, item.dropout_tokens, job.text.empty_tokens, job.sample.prompts[0].tokens]) {
      expect(Object.keys(field)).toEqual(['qwen3']);
      expect(field.qwen3).toHaveLength(512);
    }
    // The trigger alone is what caption dropout trains on; its prompt is longer than the empty one by the trigger's tokens.
    const len = (ids: number[]) => ids.length - [...ids].reverse().findIndex((id) => id !== pad);
    expect(len(item.dropout_tokens.qwen3)).toBeGreaterThan(len(job.text.empty_tokens.qwen3));
    expect(len(job.text.empty_tokens.qwen3)).toBe(8);
    expect(job.sample).toMatchObject({ sample_steps: 8, guidance_scale: 1, shift: 3 });
    expect(job.sample).not.toHaveProperty('guidance');
    expect(job.train.timestep_shift).toBe(3);
    expect(job.train).not.toHaveProperty('guidance');
  });

  it('base: 30 steps with CFG 4; the YAML\'s own sampling and train.timestep_shift win; no assistant LoRA unless the YAML names one', async () => {
    const plain = join(root, 'Z-Image');
    const job = await prepare('zb', { arch: 'zimage', name_or_path: plain });
    expect(job.model.variant).toBe('base');
    expect(job.model).not.toHaveProperty('assistant_lora');
    expect(job.sample).toMatchObject({ sample_steps: 30, guidance_scale: 4, shift: 3 });
    const own = await prepare('zo', { arch: 'zimage:turbo', name_or_path: diffusers }, { sample: { sample_steps: 12, guidance_scale: 2.5 }, train: { timestep_shift: 2 } });
    expect(own.sample).toMatchObject({ sample_steps: 12, guidance_scale: 2.5, shift: 3 });
    expect(own.train.timestep_shift).toBe(2);
  });

  it('a single-file text encoder gives the trainer its config.json as model.text_encoder_config', async () => {
    const comfy = join(root, 'comfy-job');
    const file = makeZImageComfy(comfy);
    const job = await prepare('zc', { arch: 'zimage:turbo', name_or_path: file, extras_name_or_path: diffusers });
    expect(job.model).toMatchObject({
      transformer: file, text_encoders: { qwen3: join(comfy, 'text_encoders', 'qwen_3_4b.safetensors') },
      text_encoder_config: join(diffusers, 'text_encoder', 'config.json'), ae: join(comfy, 'vae', 'ae.safetensors'),
    });
  });
});
