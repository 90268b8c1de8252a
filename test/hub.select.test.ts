// Which files of a Hub repo graft fetches (src/hub/select.ts), on the real file lists of FLUX.1-dev and
// FLUX.1-schnell (test/fixtures/hub), and how Hub ids are told from local paths.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { matchesPattern } from '../src/hub/glob.js';
import { familyFiles, familyForRepo, indexShards, isRepoId, parseRepoRef, selectFiles } from '../src/hub/index.js';
import { preferSafetensors } from '../src/hub/select.js';
import { packageRoot } from '../src/paths.js';

const siblings = (name: string): string[] =>
  (JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'hub', `${name}.json`), 'utf8')) as { siblings: { rfilename: string }[] }).siblings.map((s) => s.rfilename);

// What FluxPipeline.from_pretrained reads, written out by hand (not derived from the table under test).
const FLUX_DIFFUSERS = [
  'model_index.json',
  'scheduler/scheduler_config.json',
  'text_encoder/config.json', 'text_encoder/model.safetensors',
  'text_encoder_2/config.json', 'text_encoder_2/model-00001-of-00002.safetensors', 'text_encoder_2/model-00002-of-00002.safetensors', 'text_encoder_2/model.safetensors.index.json',
  'tokenizer/merges.txt', 'tokenizer/special_tokens_map.json', 'tokenizer/tokenizer_config.json', 'tokenizer/vocab.json',
  'tokenizer_2/special_tokens_map.json', 'tokenizer_2/spiece.model', 'tokenizer_2/tokenizer.json', 'tokenizer_2/tokenizer_config.json',
  'transformer/config.json', 'transformer/diffusion_pytorch_model-00001-of-00003.safetensors', 'transformer/diffusion_pytorch_model-00002-of-00003.safetensors',
  'transformer/diffusion_pytorch_model-00003-of-00003.safetensors', 'transformer/diffusion_pytorch_model.safetensors.index.json',
  'vae/config.json', 'vae/diffusion_pytorch_model.safetensors',
].sort();

describe('FLUX.1 file selection on the real repos', () => {
  it('FLUX.1-dev: exactly the diffusers folders; never the root single files (flux1-dev.safetensors, ae.safetensors), the picture or the docs', () => {
    const files = siblings('FLUX.1-dev');
    expect(files).toContain('flux1-dev.safetensors');
    const sel = selectFiles(files, { family: 'flux1' });
    expect(sel).toEqual({ files: FLUX_DIFFUSERS, missing: [] });
    expect(files.filter((f) => !sel.files.includes(f)).sort()).toEqual(['.gitattributes', 'LICENSE.md', 'README.md', 'ae.safetensors', 'dev_grid.jpg', 'flux1-dev.safetensors']);
  });

  it('FLUX.1-schnell: the same folders, without flux1-schnell.safetensors and ae.safetensors', () => {
    const files = siblings('FLUX.1-schnell');
    const sel = selectFiles(files, { family: 'flux' });
    expect(sel).toEqual({ files: FLUX_DIFFUSERS, missing: [] });
    expect(sel.files.some((f) => /^(flux1-schnell|ae)\.safetensors$|grid/.test(f))).toBe(false);
  });

  it('tokenizers only (weights given as local single files): model_index.json and both tokenizer folders', () => {
    const sel = selectFiles(siblings('FLUX.1-dev'), { family: 'flux1', tokenizersOnly: true });
    expect(sel.files).toEqual(FLUX_DIFFUSERS.filter((f) => f === 'model_index.json' || f.startsWith('tokenizer')));
    expect(sel.files).toHaveLength(9);
    expect(sel.missing).toEqual([]);
  });

  it('a repo without the diffusers folders is named incomplete, part by part', () => {
    const bflOnly = ['flux1-dev.safetensors', 'ae.safetensors', 'model_index.json', 'tokenizer/vocab.json', 'tokenizer/merges.txt', 'tokenizer_2/spiece.model', 'vae/config.json'];
    const sel = selectFiles(bflOnly, { family: 'flux1' });
    expect(sel.missing).toEqual([
      'scheduler: scheduler/scheduler_config.json',
      'transformer: transformer/config.json',
      'transformer: transformer/diffusion_pytorch_model.safetensors or transformer/diffusion_pytorch_model-[0-9]*-of-[0-9]*.safetensors',
      'vae: vae/diffusion_pytorch_model.safetensors or vae/diffusion_pytorch_model-[0-9]*-of-[0-9]*.safetensors',
      'text_encoder: text_encoder/config.json',
      'text_encoder: text_encoder/model.safetensors or text_encoder/model-[0-9]*-of-[0-9]*.safetensors',
      'text_encoder_2: text_encoder_2/config.json',
      'text_encoder_2: text_encoder_2/model.safetensors or text_encoder_2/model-[0-9]*-of-[0-9]*.safetensors',
    ]);
    // The tokenizers are there: tokenizers-only is complete.
    expect(selectFiles(bflOnly, { family: 'flux1', tokenizersOnly: true }).missing).toEqual([]);
  });

  it('single-file weights are taken; precision variants, pickles and other formats beside safetensors are not', () => {
    const files = [
      ...FLUX_DIFFUSERS.filter((f) => !f.startsWith('transformer/diffusion')),
      'transformer/diffusion_pytorch_model.safetensors', 'transformer/diffusion_pytorch_model.fp16.safetensors', 'transformer/diffusion_pytorch_model.bin',
      'text_encoder/pytorch_model.bin', 'text_encoder/flax_model.msgpack', 'text_encoder/model.onnx', 'tokenizer/tokenizer.json',
    ];
    const sel = selectFiles(files, { family: 'flux1' });
    expect(sel.missing).toEqual([]);
    expect(sel.files).toContain('transformer/diffusion_pytorch_model.safetensors');
    expect(sel.files).toContain('tokenizer/tokenizer.json');
    expect(sel.files.filter((f) => /fp16|\.bin$|msgpack|onnx/.test(f))).toEqual([]);
  });

  it('with nothing chosen, every file, except pickled or other weights where safetensors sit beside them', () => {
    expect(preferSafetensors(['a/model.safetensors', 'a/pytorch_model.bin', 'a/model.gguf', 'b/pytorch_model.bin', 'README.md'])).toEqual(['a/model.safetensors', 'b/pytorch_model.bin', 'README.md']);
    expect(selectFiles(['x.bin', 'x.safetensors', 'y.json'], {}).files).toEqual(['x.safetensors', 'y.json']);
  });

  it('include patterns work as huggingface-cli --include (fnmatch: * crosses folders) and add to a family; one matching nothing is named', () => {
    const files = siblings('FLUX.1-dev');
    expect(selectFiles(files, { include: ['*.json'] }).files).toEqual(files.filter((f) => f.endsWith('.json')).sort());
    expect(selectFiles(files, { include: ['tokenizer_2/'] }).files).toEqual(FLUX_DIFFUSERS.filter((f) => f.startsWith('tokenizer_2/')));
    expect(selectFiles(files, { family: 'flux1', include: ['README.md'] }).files).toEqual([...FLUX_DIFFUSERS, 'README.md'].sort());
    expect(selectFiles(files, { include: ['*.gguf'] }).missing).toEqual(['--include *.gguf: no file matches']);
    expect(selectFiles(files, { files: ['vae/config.json', 'vae/nope.json'] })).toEqual({ files: ['vae/config.json'], missing: ['vae/nope.json'] });
  });

  it('patterns: ?, [classes], [!negation], literal dots', () => {
    expect(matchesPattern('model-00001-of-00002.safetensors', 'model-[0-9]*-of-[0-9]*.safetensors')).toBe(true);
    expect(matchesPattern('model.fp16-00001-of-00002.safetensors', 'model-[0-9]*-of-[0-9]*.safetensors')).toBe(false);
    expect(matchesPattern('a.json', '?.json')).toBe(true);
    expect(matchesPattern('ab.json', '?.json')).toBe(false);
    expect(matchesPattern('bjson', 'b.json')).toBe(false);
    expect(matchesPattern('x.txt', '[!a]*')).toBe(true);
    expect(matchesPattern('a.txt', '[!a]*')).toBe(false);
  });

  it('the family comes from the repo id for the repos the table knows, and from an alias', () => {
    expect(familyForRepo('black-forest-labs/FLUX.1-dev')?.family).toBe('flux1');
    expect(familyForRepo('black-forest-labs/FLUX.1-schnell')?.family).toBe('flux1');
    expect(familyForRepo('black-forest-labs/FLUX.1-Kontext-dev')).toBeUndefined();
    expect(familyFiles('flux')?.family).toBe('flux1');
    expect(familyForRepo('Tongyi-MAI/Z-Image-Turbo')?.family).toBe('zimage');
    expect(familyForRepo('Tongyi-MAI/Z-Image')?.family).toBe('zimage');
    expect(familyFiles('zimage_turbo')?.family).toBe('zimage');
    expect(familyFiles('qwen_image')).toBeUndefined();
    expect(() => selectFiles([], { family: 'qwen_image' })).toThrow('no file selection for model family "qwen_image" (known: flux1 (flux), zimage (zimage_turbo, zimage:turbo))');
  });

  it('index files name their shards, relative to the repo', () => {
    const index = JSON.stringify({ metadata: { total_size: 3 }, weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors', c: 'model-00001-of-00002.safetensors' } });
    expect(indexShards('text_encoder_2/model.safetensors.index.json', index)).toEqual(['text_encoder_2/model-00001-of-00002.safetensors', 'text_encoder_2/model-00002-of-00002.safetensors']);
    expect(indexShards('model.safetensors.index.json', index)).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
  });
});

describe('Z-Image file selection', () => {
  // What ZImagePipeline.from_pretrained reads, written out by hand, and what a repo of that layout also holds.
  const ZIMAGE_DIFFUSERS = [
    'model_index.json', 'scheduler/scheduler_config.json',
    'text_encoder/config.json', 'text_encoder/model-00001-of-00003.safetensors', 'text_encoder/model-00002-of-00003.safetensors',
    'text_encoder/model-00003-of-00003.safetensors', 'text_encoder/model.safetensors.index.json',
    'tokenizer/merges.txt', 'tokenizer/tokenizer.json', 'tokenizer/tokenizer_config.json', 'tokenizer/vocab.json',
    'transformer/config.json', 'transformer/diffusion_pytorch_model-00001-of-00003.safetensors', 'transformer/diffusion_pytorch_model-00002-of-00003.safetensors',
    'transformer/diffusion_pytorch_model-00003-of-00003.safetensors', 'transformer/diffusion_pytorch_model.safetensors.index.json',
    'vae/config.json', 'vae/diffusion_pytorch_model.safetensors',
  ].sort();
  const repo = [...ZIMAGE_DIFFUSERS, '.gitattributes', 'README.md', 'assets/showcase.jpg', 'text_encoder/generation_config.json', 'z_image_turbo_bf16.safetensors'];

  it('the diffusers folders only, by family or alias', () => {
    for (const family of ['zimage', 'zimage_turbo', 'zimage:turbo']) expect(selectFiles(repo, { family })).toEqual({ files: ZIMAGE_DIFFUSERS, missing: [] });
  });

  it('tokenizers only, with named parts and exact files added (a single-file job\'s extras)', () => {
    expect(selectFiles(repo, { family: 'zimage', tokenizersOnly: true }).files).toEqual(['model_index.json', 'tokenizer/merges.txt', 'tokenizer/tokenizer.json', 'tokenizer/tokenizer_config.json', 'tokenizer/vocab.json']);
    const sel = selectFiles(repo, { family: 'zimage', tokenizersOnly: true, parts: ['vae'], files: ['text_encoder/config.json'] });
    expect(sel).toEqual({ files: ['model_index.json', 'text_encoder/config.json', 'tokenizer/merges.txt', 'tokenizer/tokenizer.json', 'tokenizer/tokenizer_config.json', 'tokenizer/vocab.json', 'vae/config.json', 'vae/diffusion_pytorch_model.safetensors'], missing: [] });
    expect(selectFiles(repo, { family: 'zimage', parts: ['text_encoder'] }).files).toEqual(ZIMAGE_DIFFUSERS.filter((f) => f.startsWith('text_encoder/')));
    expect(() => selectFiles(repo, { family: 'zimage', parts: ['text_encoder_2'] })).toThrow('zimage has no part text_encoder_2 (its parts: model_index.json, scheduler, transformer, vae, text_encoder, tokenizer)');
  });

  it('a repo without the tokenizer\'s config (the chat template, the pad token) is incomplete', () => {
    expect(selectFiles(ZIMAGE_DIFFUSERS.filter((f) => f !== 'tokenizer/tokenizer_config.json'), { family: 'zimage' }).missing).toEqual(['tokenizer: tokenizer/tokenizer_config.json']);
  });
});

describe('Hub ids and local paths', () => {
  it('org/name and org/name@revision are Hub ids; paths, odd names and existing folders are not', () => {
    expect(parseRepoRef('black-forest-labs/FLUX.1-dev')).toEqual({ repo: 'black-forest-labs/FLUX.1-dev', revision: undefined });
    expect(parseRepoRef('black-forest-labs/FLUX.1-dev@0ef5fff')).toEqual({ repo: 'black-forest-labs/FLUX.1-dev', revision: '0ef5fff' });
    for (const id of ['black-forest-labs/FLUX.1-dev', 'org/name@refs/pr/3', 'Tongyi-MAI/Z-Image-Turbo']) expect(isRepoId(id, { baseDirs: [] }), id).toBe(true);
    for (const p of ['/models/flux', './org/name', '../org/name', '~/org/name', 'a/b/c', 'single', 'a--b/c', 'org/na..me', '-org/name', 'org/name.git', 'org/ name']) {
      expect(isRepoId(p, { baseDirs: [] }), p).toBe(false);
    }
    // The demo model's folder has the form of an id, and is a folder of the package.
    expect(isRepoId('presets/graft-tiny', { baseDirs: [packageRoot()] })).toBe(false);
    expect(isRepoId('presets/graft-tiny', { baseDirs: ['/nonexistent'] })).toBe(true);
  });
});
