// Captions as the trainer sees them: read from the dataset (caption file, metadata.jsonl, default_caption),
// with the trigger word put in, and the variants caption dropout and DOP train on.
import { readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { CAPTION_EXTS, METADATA_FILE, parseMetadataJsonl } from '../datasets/scan.js';
import { decodeCaption } from '../datasets/checks.js';
import { PrepareError } from './errors.js';

export type CaptionExt = 'txt' | 'caption' | 'json' | 'jsonl';

export interface CaptionSources {
  folder: string;
  /** caption_ext of the dataset: its files are read first. */
  ext: CaptionExt;
  /** Every file name in the folder. */
  present: Set<string>;
  /** metadata.jsonl captions by file name (empty without the file). */
  metadata: Map<string, string>;
}

/** Read metadata.jsonl when the folder has one; a malformed line stops preparation with its number. */
export async function readMetadata(folder: string, present: Set<string>): Promise<Map<string, string>> {
  if (!present.has(METADATA_FILE)) return new Map();
  const file = join(folder, METADATA_FILE);
  const decoded = decodeCaption(await readFile(file));
  if (decoded.problem) throw new PrepareError(`${file}: ${decoded.problem}`);
  const { captions, errors } = parseMetadataJsonl(decoded.text);
  const first = errors[0];
  if (first) {
    throw new PrepareError(`${file} line ${first.line}: ${first.message}` +
      `${errors.length > 1 ? ` (and ${errors.length - 1} more bad line${errors.length > 2 ? 's' : ''})` : ''}; ` +
      'each line must be {"file_name": "<image>", "text": "<caption>"}');
  }
  return captions;
}

function clean(text: string): string {
  // One line: a caption file's trailing newline or line breaks are not part of the prompt.
  return text.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

async function readSidecar(file: string, ext: Exclude<CaptionExt, 'jsonl'>): Promise<{ text: string; problem?: string }> {
  const { text, problem } = decodeCaption(await readFile(file));
  if (ext !== 'json') return { text: clean(text), problem };
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (err) {
    throw new PrepareError(`${file}: caption file is not valid JSON (${(err as Error).message}); fix it or remove it`);
  }
  const rec = (obj ?? {}) as Record<string, unknown>;
  const caption = rec.caption ?? rec.text ?? rec.prompt;
  if (typeof caption !== 'string') throw new PrepareError(`${file}: no "caption" (or "text", "prompt") string in this JSON caption file`);
  return { text: clean(caption), problem };
}

/**
 * The caption of one image and where it came from: the dataset's caption_ext file first, then
 * metadata.jsonl, then a caption file of another extension; undefined when there is none.
 */
export async function captionOf(src: CaptionSources, image: string): Promise<{ text: string; from: CaptionExt; problem?: string } | undefined> {
  const stem = image.slice(0, image.length - extname(image).length);
  const order: CaptionExt[] = [src.ext, 'jsonl', ...CAPTION_EXTS.filter((e) => e !== src.ext)];
  for (const ext of order) {
    if (ext === 'jsonl') {
      const text = src.metadata.get(image);
      if (text !== undefined) return { text: clean(text), from: 'jsonl' };
    } else if (src.present.has(`${stem}.${ext}`)) {
      const { text, problem } = await readSidecar(join(src.folder, `${stem}.${ext}`), ext);
      return { text, from: ext, ...(problem ? { problem: `${stem}.${ext}: ${problem}` } : {}) };
    }
  }
  return undefined;
}

/** Replace [trigger] by the trigger word (an empty trigger removes it, and the space it leaves). */
export function replaceTrigger(text: string, trigger: string): string {
  if (!/\[trigger\]/i.test(text)) return text;
  return text.replace(/\[trigger\]/gi, trigger).replace(/ {2,}/g, ' ').trim();
}

/**
 * The caption a training item carries: [trigger] replaced, and the trigger put first ("zxq, a red star")
 * when the caption does not already hold it. Regularization items never get the trigger added.
 */
export function withTrigger(caption: string, trigger: string, isReg: boolean): string {
  const text = replaceTrigger(caption, trigger);
  if (isReg || trigger === '') return text;
  if (text === '') return trigger;
  return text.toLowerCase().includes(trigger.toLowerCase()) ? text : `${trigger}, ${text}`;
}

/** Differential output preservation's prompt: the caption with the trigger word replaced by the class. */
export function preservationCaption(caption: string, trigger: string, className: string): string {
  if (trigger === '') return caption;
  const escaped = trigger.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return caption.replace(new RegExp(escaped, 'gi'), className);
}
