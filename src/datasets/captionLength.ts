// Caption length as a text encoder counts it, for the Datasets screen: a dataset is not tied to a family, so
// captions are measured with the tokenizer of the first family graft trains whose tokenizers are here (a
// FLUX.1 model in the Hugging Face cache, else graft-tiny's byte-level one; nothing is downloaded for it),
// and the screen says whose limit it is.
import type { Preset } from '../presets.js';
import { trains } from '../config/support.js';

export interface CaptionCounter {
  /** The family whose text encoder's limit this is. */
  family: string;
  max: number;
  count: (text: string) => number;
}

/**
 * The counter of the first family graft trains whose model folder has its tokenizers; undefined when none.
 * With several text encoders it counts for the one that reads the most: a shorter one (FLUX.1's CLIP) being
 * cut is normal, a caption past the longest is not.
 */
export async function captionCounter(presets: Preset[]): Promise<CaptionCounter | undefined> {
  // Loaded here, not at start-up: model resolution brings the Hub client, tokenization the tokenizers.
  const { TextTokenizers } = await import('../prepare/textTokenizers.js');
  const { resolveModel } = await import('../prepare/model.js');
  for (const p of presets.filter(trains)) {
    try {
      const model = await resolveModel(p, { name_or_path: p.name_or_path }, 'presets', { offline: true });
      const longest = TextTokenizers.load(model.tokenizers).encoders.map((e) => e.tokenizer).sort((a, b) => b.maxLen - a.maxLen)[0]!;
      return { family: p.label, max: longest.maxLen, count: (text) => longest.count(text) };
    } catch { /* no model files here: try the next family */ }
  }
  return undefined;
}
