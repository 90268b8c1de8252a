// graft prepare for a model with two text encoders (a FLUX.1-like folder: tokenizer/ and tokenizer_2/ from
// graft-trainer make-tokenizers): job.json's "text" and every token field follow the several-encoder form of
// trainer-cuda/JOB_JSON.md, and a caption CLIP cuts is reported with how much. Preparation reads no weights,
// so the model's weight files are only named here; FLUX's own resolution is not part of this test.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fluxTokenizers } from '../src/prepare/fluxTokenizers.js';
import type { ModelFiles } from '../src/prepare/model.js';
import { prepareJob } from '../src/prepare/prepare.js';
import { tempDir, tinyJobYaml, writeImage } from './helpers/dataset.js';
import { clipVocab, makeFluxTokenizerFolder, t5Vocab } from './helpers/tokenizers.js';

let root: string;
let flux: string;
beforeAll(() => {
  root = tempDir('graft-prepare-encoders-');
  flux = makeFluxTokenizerFolder(join(root, 'flux'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const fluxModel = async (): Promise<ModelFiles> => ({
  arch: 'flux', name_or_path: flux, folder: flux,
  transformer: join(flux, 'transformer'), ae: join(flux, 'vae'),
  textEncoders: { clip_l: join(flux, 'text_encoder'), t5: join(flux, 'text_encoder_2') },
  tokenizers: fluxTokenizers(flux, 'dev'),
});

describe('graft prepare with two text encoders', () => {
  it('writes every token field as {clip_l: 77 ids, t5: 512 ids} and text.encoders, and warns when CLIP cuts a caption', async () => {
    const data = join(root, 'data');
    mkdirSync(data, { recursive: true });
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'a.txt'), 'a red star');
    await writeImage(join(data, 'long.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'long.txt'), Array(80).fill('blue').join(' '));
    const config = join(root, 'job.yaml');
    writeFileSync(config, tinyJobYaml({
      name: 'flux_like', trainingFolder: join(root, 'out'), datasets: [{ folder_path: data }], trigger: 'zxq',
      train: { diff_output_preservation: true, diff_output_preservation_class: 'woman' },
      sample: { prompts: ['[trigger] on a beach', 'a cat'] },
    }));
    const lines: string[] = [];
    const summary = await prepareJob(config, { home: join(root, 'home'), log: (l) => lines.push(l), concurrency: 2, resolveModel: fluxModel });
    const job = JSON.parse(readFileSync(summary.jobJson, 'utf8'));

    const clipV = clipVocab(join(flux, 'tokenizer')), t5V = t5Vocab(join(flux, 'tokenizer_2'));
    const bos = clipV['<|startoftext|>']!, eos = clipV['<|endoftext|>']!;
    const clip = (tokens: string[]) => [bos, ...tokens.map((t) => clipV[t]!), eos, ...Array(75 - tokens.length).fill(eos)];
    const t5 = (pieces: string[]) => [...pieces.map((p) => t5V[p]!), 1, ...Array(511 - pieces.length).fill(0)];

    expect(Object.keys(job.text)).toEqual(['encoders', 'empty_tokens']);
    expect(job.text.encoders).toEqual({ clip_l: { max_len: 77 }, t5: { max_len: 512 } });
    expect(job.text.empty_tokens).toEqual({ clip_l: clip([]), t5: t5([]) });
    expect(job.model.tokenizers).toEqual({ clip_l: join(flux, 'tokenizer', 'vocab.json'), t5: join(flux, 'tokenizer_2', 'tokenizer.json') });
    expect(job.model.tokenizer).toBeUndefined();

    const items = job.datasets[0].items;
    const shaped = (field: unknown, what: string) => {
      expect(Object.keys(field as object).sort(), what).toEqual(['clip_l', 't5']);
      const f = field as Record<string, number[]>;
      expect([f.clip_l!.length, f.t5!.length], what).toEqual([77, 512]);
      expect([...f.clip_l!, ...f.t5!].every((id) => Number.isInteger(id) && id >= 0), what).toBe(true);
    };
    for (const it of items) for (const field of ['tokens', 'dropout_tokens', 'dop_tokens']) shaped(it[field], `${it.source} ${field}`);
    for (const p of job.sample.prompts) shaped(p.tokens, p.prompt);

    // The trigger goes in front; the trigger word's letters have no merges or pieces of their own.
    const a = items.find((it: any) => it.source.endsWith('a.png'));
    expect(a.caption).toBe('zxq, a red star');
    expect(a.tokens).toEqual({
      clip_l: clip(['z', 'x', 'q</w>', ',</w>', 'a</w>', 'red</w>', 'star</w>']),
      t5: t5(['▁', 'z', 'x', 'q', ',', '▁a', '▁red', '▁star']),
    });
    expect(a.dropout_tokens).toEqual({ clip_l: clip(['z', 'x', 'q</w>']), t5: t5(['▁', 'z', 'x', 'q']) });
    expect(a.dop_tokens).toEqual({ clip_l: clip(['woman</w>', ',</w>', 'a</w>', 'red</w>', 'star</w>']), t5: t5(['▁woman', ',', '▁a', '▁red', '▁star']) });
    expect(job.sample.prompts[1]).toMatchObject({ prompt: 'a cat', tokens: { clip_l: clip(['a</w>', 'cat</w>']), t5: t5(['▁a', '▁cat']) } });

    // "zxq, " and 80 words: 3 + 1 + 80 CLIP tokens, 2 special: 86 against 77.
    const long = items.find((it: any) => it.source.endsWith('long.png'));
    expect(long.tokens.clip_l).toEqual(clip(['z', 'x', 'q</w>', ',</w>', ...Array(71).fill('blue</w>')]));
    expect(lines).toContain('    long.png: caption is 86 tokens for clip_l, which reads 77: the last 9 are cut (normal: t5 still sees up to 512)');
    expect(lines.filter((l) => l.includes('a.png:'))).toEqual([]);
  });
});
