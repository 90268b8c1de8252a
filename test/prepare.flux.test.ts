// Where a FLUX.1 job's files come from (src/prepare/fluxModel.ts), for each thing a user may name in
// model.name_or_path: a diffusers folder, a folder carrying both layouts (BFL's repo), a single BFL or ComfyUI
// transformer file with its parts beside it, the tokenizers from model.extras_name_or_path. Folders are
// written by graft-trainer make-random flux-model; no weights are read here, only tensor names.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PrepareError } from '../src/prepare/errors.js';
import { resolveModel } from '../src/prepare/model.js';
import { loadPresets, presetById } from '../src/presets.js';
import { tempDir } from './helpers/dataset.js';

const TRAINER = process.env.GRAFT_TRAINER ?? resolve('trainer-cuda/build/graft-trainer');
const flux = presetById('flux1', loadPresets())!;
let root: string;
let config: string;

function makeModel(dir: string, layout: string, variant = 'dev'): string {
  const r = spawnSync(TRAINER, ['make-random', 'flux-model', dir, '--layout', layout, '--variant', variant, '--shape', 'tiny', '--double', '1', '--single', '1'], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return dir;
}

beforeAll(() => {
  root = tempDir('graft-prepare-flux-');
  config = join(root, 'job.yaml');
  makeModel(join(root, 'dev'), 'diffusers');
  makeModel(join(root, 'schnell'), 'diffusers', 'schnell');
  makeModel(join(root, 'bfl'), 'bfl');
  makeModel(join(root, 'comfy'), 'comfyui');
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

// Offline, with a cache of its own: nothing here may reach a Hub, nor find this machine's models.
const model = (nameOrPath: string, extra: Record<string, unknown> = {}) =>
  resolveModel(flux, { arch: 'flux', name_or_path: nameOrPath, ...extra }, config, { offline: true, env: { HF_HUB_CACHE: join(root, 'hf-cache') } });

describe('FLUX.1 model files', () => {
  it('a diffusers folder: every component folder, both tokenizers, dev traits from transformer/config.json', async () => {
    const dir = join(root, 'dev');
    const m = await model(dir);
    expect(m).toMatchObject({
      arch: 'flux', folder: dir, transformer: join(dir, 'transformer'), ae: join(dir, 'vae'),
      textEncoders: { clip_l: join(dir, 'text_encoder'), t5: join(dir, 'text_encoder_2') },
      traits: { variant: 'dev', guidanceEmbedding: true, sampleShift: 'resolution' },
    });
    expect(m.tokenizers.map((t) => [t.name, t.kind, t.maxLen])).toEqual([['clip_l', 'clip', undefined], ['t5', 't5', 512]]);
  });

  it('schnell: no guidance embedding, no time shift, T5 cut at 256', async () => {
    const m = await model(join(root, 'schnell'));
    expect(m.traits).toEqual({ variant: 'schnell', guidanceEmbedding: false, sampleShift: 1 });
    expect(m.tokenizers[1]!.maxLen).toBe(256);
  });

  it('BFL\'s repo named as a folder is read through its diffusers folders; its single file named, with the parts beside it', async () => {
    const dir = join(root, 'bfl');
    expect((await model(dir)).transformer).toBe(join(dir, 'transformer'));
    const single = await model(join(dir, 'flux1-dev.safetensors'));
    expect(single).toMatchObject({
      transformer: join(dir, 'flux1-dev.safetensors'), ae: join(dir, 'ae.safetensors'),
      textEncoders: { clip_l: join(dir, 'text_encoder'), t5: join(dir, 'text_encoder_2') },
      traits: { variant: 'dev' },
    });
    expect(single.tokenizers.map((t) => 'tokenizerJson' in t.source ? t.source.tokenizerJson : t.source.vocab))
      .toEqual([join(dir, 'tokenizer', 'vocab.json'), join(dir, 'tokenizer_2', 'tokenizer.json')]);
  });

  it('ComfyUI\'s folders: vae/ and text_encoders/ beside diffusion_models/, fp16 T5 before fp8, tokenizers from extras_name_or_path', async () => {
    const dir = join(root, 'comfy');
    const file = join(dir, 'diffusion_models', 'flux1-dev.safetensors');
    const extras = join(root, 'dev');
    const m = await model(file, { extras_name_or_path: extras });
    expect(m).toMatchObject({
      transformer: file, ae: join(dir, 'vae', 'ae.safetensors'),
      textEncoders: { clip_l: join(dir, 'text_encoders', 'clip_l.safetensors'), t5: join(dir, 'text_encoders', 't5xxl_fp16.safetensors') },
    });
    expect(m.tokenizers[1]!.source).toMatchObject({ tokenizerJson: join(extras, 'tokenizer_2', 'tokenizer.json') });
    copyFileSync(join(dir, 'text_encoders', 't5xxl_fp16.safetensors'), join(dir, 'text_encoders', 't5xxl_fp8_e4m3fn_scaled.safetensors'));
    expect((await model(file, { extras_name_or_path: extras })).textEncoders.t5).toBe(join(dir, 'text_encoders', 't5xxl_fp16.safetensors'));
    rmSync(join(dir, 'text_encoders', 't5xxl_fp16.safetensors'));
    expect((await model(file, { extras_name_or_path: extras })).textEncoders.t5).toBe(join(dir, 'text_encoders', 't5xxl_fp8_e4m3fn_scaled.safetensors'));
  });

  it('a part that is nowhere: one line naming each missing part and the folders looked in', async () => {
    const dir = join(root, 'alone');
    mkdirSync(dir);
    copyFileSync(join(root, 'bfl', 'flux1-dev.safetensors'), join(dir, 'flux1-dev.safetensors'));
    copyFileSync(join(root, 'bfl', 'ae.safetensors'), join(dir, 'ae.safetensors'));
    // The folder named: its one flux1-*.safetensors is the transformer.
    await expect(model(dir)).rejects.toThrow(new PrepareError(
      `${join(dir, 'flux1-dev.safetensors')}: the CLIP-L text encoder (clip_l.safetensors), the T5-XXL text encoder (t5xxl_*.safetensors) are not beside this FLUX.1 transformer ` +
      `(looked in ${dir}, ${root}): put them there, or set model.extras_name_or_path to a FLUX.1 diffusers folder or Hub id to take them from`));
    // extras_name_or_path supplies them (and the tokenizers).
    const m = await model(dir, { extras_name_or_path: join(root, 'dev') });
    expect(m.textEncoders).toEqual({ clip_l: join(root, 'dev', 'text_encoder'), t5: join(root, 'dev', 'text_encoder_2') });
    expect(m.ae).toBe(join(dir, 'ae.safetensors'));
    copyFileSync(join(dir, 'flux1-dev.safetensors'), join(dir, 'flux1-schnell.safetensors'));
    await expect(model(dir)).rejects.toThrow('holds several transformer files (flux1-dev.safetensors, flux1-schnell.safetensors): name one');
  });

  it('a file that is not a FLUX.1 transformer, or not safetensors at all, is named with what is wrong', async () => {
    const clip = join(root, 'comfy', 'text_encoders', 'clip_l.safetensors');
    await expect(model(clip)).rejects.toThrow(`${clip} is not a FLUX.1 transformer: it has no double_blocks.0.img_attn.qkv.weight (BFL) or transformer_blocks.0.attn.to_q.weight (diffusers); its first tensors are`);
    const junk = join(root, 'junk.safetensors');
    writeFileSync(junk, Buffer.from('this is not a checkpoint at all'));
    await expect(model(junk)).rejects.toThrow(`${junk}: not a safetensors file (header length`);
    await expect(model(join(root, 'dev', 'model_index.json'))).rejects.toThrow('model_index.json is not a .safetensors file');
    await expect(model(join(root, 'missing'))).rejects.toThrow(`no such file or folder (${join(root, 'missing')}), and not a Hub id (org/name)`);
  });

  it('a Hub id not in the cache, offline: says it is not there', async () => {
    await expect(model('black-forest-labs/FLUX.1-dev')).rejects.toThrow(/model\.name_or_path black-forest-labs\/FLUX\.1-dev: .*offline/i);
  });
});
