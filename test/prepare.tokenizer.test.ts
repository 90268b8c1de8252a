// The demo model's tokenizer.json, read through @huggingface/tokenizers, must give exactly the ids the
// trainer's byte-level tokenizer gives (trainer-cuda/demo/text_encoder.cpp tokenize_bytes). Checked against
// the rule written out here (the spec) and against `graft-trainer tokenize` itself.
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { byteLevelTokenizerJson } from '../src/prepare/byteTokenizer.js';
import { PrepareError } from '../src/prepare/errors.js';
import { resolveModel } from '../src/prepare/model.js';
import { TextTokenizers } from '../src/prepare/textTokenizers.js';
import { CaptionTokenizer } from '../src/prepare/tokenizer.js';
import { loadPresets } from '../src/presets.js';
import { TRAINER } from './helpers/daemon.js';
import { tempDir } from './helpers/dataset.js';

const ROOT = join(import.meta.dirname, '..');
const FILE = join(ROOT, 'presets', 'graft-tiny', 'tokenizer.json');
const MAX_LEN = 48;

/** The rule: 0 pad, 1 bos, 2 eos, 3 + byte; [bos] bytes [eos], cut to max_len keeping eos, padded with 0. */
function byRule(text: string): number[] {
  const ids = [1, ...[...Buffer.from(text, 'utf8')].slice(0, MAX_LEN - 2).map((b) => 3 + b), 2];
  while (ids.length < MAX_LEN) ids.push(0);
  return ids;
}

const TEXTS = [
  'zxq, a large red star on a white background',
  '',
  ' ',
  'x'.repeat(46),
  'x'.repeat(47),
  'a very long caption that goes on well past the forty-eight tokens the demo text encoder reads',
  'café crème',
  '日本の星',
  'a star 🌟 and a rocket 🚀',
  '<s> </s> <pad> [trigger]',
  'tab\tnew\nline',
  "'s 're punctuation!? 123",
];

const trainerTokenize = (text: string) => spawnSync(TRAINER, ['tokenize', text, '--max-len', String(MAX_LEN)], { encoding: 'utf8' });

describe('graft-tiny tokenizer.json', () => {
  const tok = CaptionTokenizer.load(FILE);

  it('is what byteLevelTokenizerJson writes, with the text encoder length of model.json', () => {
    expect(JSON.parse(readFileSync(FILE, 'utf8'))).toEqual(byteLevelTokenizerJson(MAX_LEN));
    const model = JSON.parse(readFileSync(join(ROOT, 'presets', 'graft-tiny', 'model.json'), 'utf8'));
    expect(tok.maxLen).toBe(model.text_max_len);
  });

  it('gives the ids of the byte-level rule: ASCII, empty, truncated, non-ASCII', () => {
    for (const t of TEXTS) expect(tok.encode(t), JSON.stringify(t)).toEqual(byRule(t));
    expect(tok.encode('hi').slice(0, 5)).toEqual([1, 107, 108, 2, 0]);
    expect(tok.encode('é').slice(0, 4)).toEqual([1, 0xc3 + 3, 0xa9 + 3, 2]);
    const long = tok.encode('y'.repeat(100));
    expect([long.length, long[46], long[47]]).toEqual([48, 'y'.charCodeAt(0) + 3, 2]);
  });

  it('gives the ids of graft-trainer tokenize', () => {
    for (const t of TEXTS) {
      const r = trainerTokenize(t);
      expect(r.status, r.stderr).toBe(0);
      expect(tok.encode(t), JSON.stringify(t)).toEqual(JSON.parse(r.stdout));
    }
  });

  it('is the single tokenizer of the graft_tiny model, whose length model.json must agree with', async () => {
    const preset = loadPresets().find((p) => p.family === 'graft_tiny');
    const model = await resolveModel(preset, { name_or_path: 'presets/graft-tiny' }, join(ROOT, 'job.yaml'));
    expect(model.tokenizers).toEqual([{
      name: 'text', kind: 'tiny', source: { tokenizerJson: FILE }, maxLen: 48, maxLenFrom: `text_max_len of ${join(ROOT, 'presets', 'graft-tiny', 'model.json')}`,
    }]);
    const set = TextTokenizers.load(model.tokenizers);
    expect(set.textSection()).toEqual({ max_len: 48, empty_tokens: byRule('') });
    expect(set.encode('zxq')).toEqual(byRule('zxq'));
    expect(() => TextTokenizers.load([{ ...model.tokenizers[0]!, maxLen: 40 }]))
      .toThrow(new PrepareError(`${FILE}: fixed length 48 differs from the text encoder's 40 (text_max_len of ${join(ROOT, 'presets', 'graft-tiny', 'model.json')})`));
  });

  it('says clearly when a tokenizer is missing or has no fixed length', () => {
    expect(() => CaptionTokenizer.load('/nonexistent/tokenizer.json')).toThrow(new PrepareError('tokenizer not found: /nonexistent/tokenizer.json (the model folder needs its tokenizer.json)'));
    const dir = tempDir('graft-tok-');
    try {
      const loose = { ...byteLevelTokenizerJson(8), truncation: null, padding: null };
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(loose));
      expect(() => CaptionTokenizer.load(join(dir, 'tokenizer.json'))).toThrow(/no fixed length/);
      expect(CaptionTokenizer.load(join(dir, 'tokenizer.json'), 6).encode('abcdef')).toEqual([1, 100, 101, 102, 103, 2]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
