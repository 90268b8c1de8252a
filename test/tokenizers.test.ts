// FLUX.1's two tokenizers as preparation runs them, on the project's small vocabularies (graft-trainer
// make-tokenizers): CLIP built from vocab.json + merges.txt (FLUX.1-dev ships no tokenizer.json there) and
// from tokenizer.json, T5 from tokenizer.json. Expected tokens are spelled out by hand from how the small
// vocabularies are made (trainer-cuda/demo/tokenizer_files.cpp) and looked up in the files as data; T5's ids
// are also checked against Google's sentencepiece reading the same model (spiece.model).
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync, readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { captionProblems } from '../src/datasets/checks.js';
import { PrepareError } from '../src/prepare/errors.js';
import { fluxTokenizers } from '../src/prepare/fluxTokenizers.js';
import { TextTokenizers } from '../src/prepare/textTokenizers.js';
import { tempDir } from './helpers/dataset.js';
import { clipVocab, makeFluxTokenizerFolder, makeTokenizers, t5Vocab } from './helpers/tokenizers.js';

let root: string;
let flux: string;
let clipV: Record<string, number>;
let t5V: Record<string, number>;
beforeAll(() => {
  root = tempDir('graft-tokenizers-');
  flux = makeFluxTokenizerFolder(join(root, 'flux'));
  makeTokenizers(join(root, 'clip-json'), 'clip', true);
  clipV = clipVocab(join(flux, 'tokenizer'));
  t5V = t5Vocab(join(flux, 'tokenizer_2'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const load = (variant: 'dev' | 'schnell' = 'dev') => TextTokenizers.load(fluxTokenizers(flux, variant));
const encoder = (set: TextTokenizers, name: string) => set.encoders.find((e) => e.name === name)!.tokenizer;

/** CLIP ids of hand-spelled tokens, between <|startoftext|> and <|endoftext|>, padded with <|endoftext|> to 77. */
function clipIds(tokens: string[]): number[] {
  const ids = [clipV['<|startoftext|>']!, ...tokens.map((t) => { expect(clipV[t], t).toBeDefined(); return clipV[t]!; }), clipV['<|endoftext|>']!];
  while (ids.length < 77) ids.push(clipV['<|endoftext|>']!);
  return ids;
}

/** T5 ids of hand-spelled pieces, then </s> (1), padded with <pad> (0) to maxLen. */
function t5Ids(pieces: string[], maxLen = 512): number[] {
  const ids = [...pieces.map((p) => { expect(t5V[p], p).toBeDefined(); return t5V[p]!; }), 1];
  while (ids.length < maxLen) ids.push(0);
  return ids;
}

describe('CLIP tokenizer (FLUX.1 tokenizer/)', () => {
  it('puts <|startoftext|> and <|endoftext|> around the text, pads with <|endoftext|> to 77; they are the two largest ids', () => {
    const clip = encoder(load(), 'clip_l');
    const ids = Object.values(clipV).sort((a, b) => b - a);
    expect([clipV['<|endoftext|>'], clipV['<|startoftext|>']]).toEqual([ids[0], ids[1]]);
    // As in CLIP's real vocabulary: "a" is byte 0x61, 64th of the printable bytes, and "a</w>" 256 later.
    expect([clipV.a, clipV['a</w>']]).toEqual([64, 320]);
    expect(clip.maxLen).toBe(77);
    expect(clip.encode('a red star')).toEqual(clipIds(['a</w>', 'red</w>', 'star</w>']));
    expect(clip.encode('')).toEqual(clipIds([]));
  });

  it('lower-cases and cleans whitespace before splitting words', () => {
    const clip = encoder(load(), 'clip_l');
    const plain = clip.encode('a red star');
    for (const t of ['A Red STAR', '  a\tred\n\nstar  ', 'a\u00a0red  star']) expect(clip.encode(t), JSON.stringify(t)).toEqual(plain);
  });

  it('reads "</w>" on the last symbol of a word: "red" is one token, in "reds" it is not', () => {
    const clip = encoder(load(), 'clip_l');
    // The merges spelling "red" are "r e" then "re d</w>": the second needs "d" to end the word. In "reds"
    // the "s" ends it, no merge joins "d" and "s</w>", so only "r e" applies.
    expect(clip.encode('red')).toEqual(clipIds(['red</w>']));
    expect(clip.encode('reds')).toEqual(clipIds(['re', 'd', 's</w>']));
    // Letters no word of the vocabulary holds stay single symbols; punctuation is a word of its own.
    expect(clip.encode('zxq, a red star')).toEqual(clipIds(['z', 'x', 'q</w>', ',</w>', 'a</w>', 'red</w>', 'star</w>']));
    expect(clip.encode("a cat's hat")).toEqual(clipIds(['a</w>', 'cat</w>', "'", 's</w>', 'hat</w>']));
  });

  it('every word the small vocabulary was made from comes out as its own token', () => {
    const clip = encoder(load(), 'clip_l');
    const words = Object.keys(clipV).filter((t) => /^[a-z]{2,}<\/w>$/.test(t));
    expect(words.length).toBeGreaterThan(40);
    for (const w of words) expect(clip.encode(w.slice(0, -4)), w).toEqual(clipIds([w]));
  });

  it('cuts a long caption to 75 tokens between the special tokens, and says by how much', () => {
    const set = load();
    const clip = encoder(set, 'clip_l');
    const text = Array(100).fill('red').join(' ');
    expect(clip.encode(text)).toEqual(clipIds(Array(75).fill('red</w>')));
    expect(set.lengths(text)).toEqual([{ name: 'clip_l', count: 102, max: 77 }, { name: 't5', count: 101, max: 512 }]);
    expect(captionProblems(text, set.lengths(text))).toEqual(['caption is 102 tokens for clip_l, which reads 77: the last 25 are cut (normal: t5 still sees up to 512)']);
  });

  it('gives the same ids from vocab.json + merges.txt as from tokenizer.json', () => {
    const fromVocab = encoder(load(), 'clip_l');
    const fromJson = TextTokenizers.load([{ name: 'clip_l', kind: 'clip', source: { tokenizerJson: join(root, 'clip-json', 'tokenizer.json') } }]);
    const texts = ['a red star on a blue background', 'zxq, a red star', 'Reds  and STARS!', "it's a cat's hat", 'café crème 日本 🌟', '123 go', '', Array(90).fill('blue').join(' ')];
    for (const t of texts) expect(fromJson.encoders[0]!.tokenizer.encode(t), t).toEqual(fromVocab.encode(t));
  });

  it('refuses a merges.txt without its header, naming the file', () => {
    const dir = join(root, 'no-header');
    makeTokenizers(dir, 'clip');
    const merges = join(dir, 'merges.txt');
    writeFileSync(merges, readFileSync(merges, 'utf8').split('\n').slice(1).join('\n'));
    expect(() => TextTokenizers.load([{ name: 'clip_l', kind: 'clip', source: { vocab: join(dir, 'vocab.json'), merges } }]))
      .toThrow(new PrepareError(`${merges}: the first line is not the "#version: ..." header CLIP's merges.txt starts with`));
  });
});

describe('T5 tokenizer (FLUX.1 tokenizer_2/)', () => {
  it('appends </s> and pads with <pad> (0) to 512 for dev, 256 for schnell', () => {
    const t5 = encoder(load(), 't5');
    expect([t5V['<pad>'], t5V['</s>'], t5V['<unk>']]).toEqual([0, 1, 2]);
    expect(t5.encode('a red star')).toEqual(t5Ids(['▁a', '▁red', '▁star']));
    expect(t5.encode('')).toEqual(t5Ids([]));
    const schnell = encoder(load('schnell'), 't5');
    expect(schnell.encode('a red star')).toEqual(t5Ids(['▁a', '▁red', '▁star'], 256));
  });

  it('keeps case, spells words it lacks, and reads the trigger word as letters', () => {
    const t5 = encoder(load(), 't5');
    // "▁red" scores above any spelling of it; "Red" has no piece of its own, and "ed" beats "e" + "d".
    expect(t5.encode('Red reds')).toEqual(t5Ids(['▁', 'R', 'ed', '▁red', 's']));
    expect(t5.encode('zxq, a red star')).toEqual(t5Ids(['▁', 'z', 'x', 'q', ',', '▁a', '▁red', '▁star']));
  });

  it('cuts a long caption to 511 pieces and keeps </s>', () => {
    const set = load();
    const text = Array(600).fill('red').join(' ');
    expect(encoder(set, 't5').encode(text)).toEqual(t5Ids(Array(511).fill('▁red')));
    expect(captionProblems(text, set.lengths(text))).toEqual([
      'caption is 602 tokens for clip_l, which reads 77: the last 525 are cut',
      'caption is 601 tokens for t5, which reads 512: the last 89 are cut',
    ]);
  });

  it('gives the ids sentencepiece gives for the same model', () => {
    const t5 = encoder(load(), 't5');
    const texts = [
      'a red star on a blue background', 'zxq, a red star', 'A red star', 'The cat and the dog', 'Reds  and   STARS',
      'a photo of a woman wearing a hat, standing in the city at night', '  padded  text  ', 'numbers 123 and punctuation!?',
      "it's a cat's hat", 'Ｒｅｄ ﬁsh…', 'a\u00a0dog\u2003cat', '日本の星 and a 🌟', 'café crème', '', 'ingest blueing',
    ];
    const r = spawnSync('/usr/bin/python3', [join(import.meta.dirname, 'helpers', 'sentencepiece_ids.py')], {
      input: JSON.stringify({ model: join(flux, 'tokenizer_2', 'spiece.model'), texts }), encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    const reference = JSON.parse(r.stdout) as number[][];
    texts.forEach((t, i) => {
      const ids = t5.encode(t);
      const end = ids.indexOf(1) + 1;
      expect(ids.slice(0, end), JSON.stringify(t)).toEqual(reference[i]);
      expect(ids.slice(end).every((id) => id === 0)).toBe(true);
    });
  });
});

describe('fluxTokenizers', () => {
  it('finds tokenizer/ (vocab.json + merges.txt, or tokenizer.json) and tokenizer_2/, with the variant\'s T5 length', () => {
    const files = fluxTokenizers(flux, 'schnell');
    expect(files.map((f) => [f.name, f.kind, f.maxLen])).toEqual([['clip_l', 'clip', undefined], ['t5', 't5', 256]]);
    expect(files[0]!.source).toEqual({
      vocab: join(flux, 'tokenizer', 'vocab.json'), merges: join(flux, 'tokenizer', 'merges.txt'),
      specialTokensMap: join(flux, 'tokenizer', 'special_tokens_map.json'), tokenizerConfig: join(flux, 'tokenizer', 'tokenizer_config.json'),
    });
    const withJson = makeFluxTokenizerFolder(join(root, 'flux-json'), true);
    expect(fluxTokenizers(withJson, 'dev')[0]!.source).toMatchObject({ tokenizerJson: join(withJson, 'tokenizer', 'tokenizer.json') });
  });

  it('names the missing file and the folder it looked in', () => {
    const broken = makeFluxTokenizerFolder(join(root, 'flux-broken'));
    unlinkSync(join(broken, 'tokenizer', 'merges.txt'));
    expect(() => fluxTokenizers(broken, 'dev')).toThrow(new PrepareError(
      `merges.txt is missing from ${join(broken, 'tokenizer')} (FLUX.1's CLIP tokenizer: vocab.json and merges.txt, or tokenizer.json)`));
    unlinkSync(join(broken, 'tokenizer_2', 'tokenizer.json'));
    makeTokenizers(join(broken, 'tokenizer'), 'clip');
    expect(() => fluxTokenizers(broken, 'dev')).toThrow(new PrepareError(`tokenizer.json is missing from ${join(broken, 'tokenizer_2')} (FLUX.1's T5 tokenizer)`));
  });
});
