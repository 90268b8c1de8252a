// CLIP's BPE tokenizer (openai clip-vit-large-patch14: FLUX.1's tokenizer/), as the diffusers pipeline
// calls it: padding="max_length", max_length=model_max_length (77), truncation=True, so
// <|startoftext|> text <|endoftext|> padded with the pad token (<|endoftext|> in FLUX.1's folder). Text
// is NFC-normalized, whitespace runs made one space, lower-cased; each word's last symbol carries "</w>".
// FLUX.1's folder has no tokenizer.json, only vocab.json and merges.txt: the tokenizer is then built
// to the definition transformers' CLIPConverter gives CLIPTokenizerFast, and run by the same library.
import { readFileSync } from 'node:fs';
import { PrepareError } from './errors.js';
import { CaptionTokenizer, readTokenizerJson } from './tokenizer.js';
import type { TokenizerFiles } from './tokenizerFiles.js';
import { tokenizerSettings } from './tokenizerSettings.js';

type Obj = Record<string, unknown>;

const CLIP_MAX_LEN = 77;
/** CLIPTokenizer reads at most this many merges (49152 - 256 - 2): later lines of merges.txt do nothing. */
const CLIP_MAX_MERGES = 48894;

interface ClipSpecials {
  bos: string;
  eos: string;
  unk: string;
}

/** The tokenizer.json that CLIPTokenizerFast makes from a vocabulary and its merges. */
function clipDefinition(vocab: Record<string, number>, merges: string[], specials: ClipSpecials, vocabFile: string): Obj {
  const idOf = (token: string, role: string) => {
    const id = vocab[token];
    if (id === undefined) throw new PrepareError(`${vocabFile}: the ${role} token ${JSON.stringify(token)} is not in the vocabulary`);
    return id;
  };
  const bos = idOf(specials.bos, 'start'), eos = idOf(specials.eos, 'end');
  idOf(specials.unk, 'unknown');
  const added = (id: number, content: string, normalized: boolean) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized, special: true });
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [added(bos, specials.bos, true), added(eos, specials.eos, false)],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }, { type: 'Lowercase' }] },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+" }, behavior: 'Removed', invert: true },
        byteLevel,
      ],
    },
    post_processor: { type: 'RobertaProcessing', sep: [specials.eos, eos], cls: [specials.bos, bos], trim_offsets: false, add_prefix_space: false },
    decoder: byteLevel,
    model: {
      type: 'BPE', dropout: null, unk_token: specials.unk, continuing_subword_prefix: '', end_of_word_suffix: '</w>',
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges,
    },
  };
}

function readVocab(file: string): Record<string, number> {
  const json = readTokenizerJson(file, "CLIP's vocab.json: token -> id");
  for (const [token, id] of Object.entries(json)) {
    if (!Number.isInteger(id) || (id as number) < 0) throw new PrepareError(`${file}: ${JSON.stringify(token)} has id ${JSON.stringify(id)}; every id must be a whole number >= 0`);
  }
  return json as Record<string, number>;
}

/** merges.txt: a "#version" line, then one "left right" pair a line, best first. */
function readMerges(file: string): string[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new PrepareError(code === 'ENOENT' ? `tokenizer not found: ${file} (CLIP's merges.txt)` : `${file}: cannot read the merges: ${code}`);
  }
  const lines = text.trim().split('\n');
  // CLIPTokenizer drops the first line whatever it holds: a file without the header would lose a merge there.
  if (!lines[0]?.startsWith('#version')) throw new PrepareError(`${file}: the first line is not the "#version: ..." header CLIP's merges.txt starts with`);
  const merges = lines.slice(1, 1 + CLIP_MAX_MERGES);
  merges.forEach((m, i) => {
    if (!/^\S+ \S+$/.test(m)) throw new PrepareError(`${file} line ${i + 2}: ${JSON.stringify(m)} is not a merge ("left right")`);
  });
  return merges;
}

export function loadClipTokenizer(t: TokenizerFiles): CaptionTokenizer {
  const s = tokenizerSettings(t.source);
  const specials = { bos: s.bos ?? '<|startoftext|>', eos: s.eos ?? '<|endoftext|>', unk: s.unk ?? '<|endoftext|>' };
  const fixed = { maxLen: t.maxLen ?? s.modelMaxLength ?? CLIP_MAX_LEN, padToken: s.pad ?? specials.eos };
  if ('tokenizerJson' in t.source) {
    const file = t.source.tokenizerJson;
    return CaptionTokenizer.create(readTokenizerJson(file, "CLIP's tokenizer.json"), file, fixed);
  }
  const { vocab, merges } = t.source;
  return CaptionTokenizer.create(clipDefinition(readVocab(vocab), readMerges(merges), specials, vocab), vocab, fixed);
}
