// Tokenizer folders made by graft-trainer make-tokenizers (the project's own small CLIP, T5 and Qwen
// vocabularies, in the real files' formats), laid out as FLUX.1's and Z-Image's diffusers folders hold them.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TRAINER } from './daemon.js';

export function makeTokenizers(dir: string, kind: 'clip' | 't5' | 'qwen', json = false): void {
  const r = spawnSync(TRAINER, ['make-tokenizers', dir, '--kind', kind, ...(json ? ['--json'] : [])], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`make-tokenizers ${kind} failed: ${r.stderr}`);
}

/** <folder>/tokenizer (CLIP: vocab.json + merges.txt, and tokenizer.json with clipJson) and <folder>/tokenizer_2 (T5). */
export function makeFluxTokenizerFolder(folder: string, clipJson = false): string {
  makeTokenizers(join(folder, 'tokenizer'), 'clip', clipJson);
  makeTokenizers(join(folder, 'tokenizer_2'), 't5');
  return folder;
}

/** Token -> id of a CLIP vocab.json, read as data: the tests spell tokens out and look their ids up here. */
export function clipVocab(dir: string): Record<string, number> {
  return JSON.parse(readFileSync(join(dir, 'vocab.json'), 'utf8')) as Record<string, number>;
}

/** Piece -> id of a T5 tokenizer.json's Unigram vocabulary (ids are positions in the list). */
export function t5Vocab(dir: string): Record<string, number> {
  const json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as { model: { vocab: [string, number][] } };
  return Object.fromEntries(json.model.vocab.map(([piece], id) => [piece, id]));
}
