// The reference toolkit's quantization types (model.qtype / qtype_te) and the formats graft's trainer
// keeps frozen weights in (job.json model.quantize / quantize_te, trainer-cuda/ops/quant.h): fp8 e4m3
// and int8 with a scale per output channel, and NF4 in blocks of 64. A qtype with no format of its own
// runs as the nearest one with at least its bits, and the form says so.

export type TrainerFormat = 'fp8' | 'int8' | 'nf4';

export interface QtypeMapping {
  format: TrainerFormat;
  /** Why the weights are not kept exactly as the qtype asks (another format, or an adapter left out). */
  note?: string;
}

const EXACT: Record<string, TrainerFormat> = { qfloat8: 'fp8', float8: 'fp8', uint8: 'int8', qint8: 'int8', uint4: 'nf4', qint4: 'nf4' };
const NEAREST: Record<string, TrainerFormat> = { uint7: 'int8', uint6: 'int8', uint5: 'int8', uint3: 'nf4', uint2: 'nf4' };

export const FORMAT_NAMES: Record<TrainerFormat, string> = {
  fp8: 'float8 (e4m3, a scale per output channel)',
  int8: 'int8 (a scale per output channel)',
  nf4: 'NF4 (4-bit NormalFloat, blocks of 64)',
};

/** The trainer's format for a qtype as the YAML spells it (possibly `<qtype>|<accuracy recovery adapter>`). */
export function trainerFormat(qtype: string): QtypeMapping {
  const [base = '', adapter] = qtype.split('|');
  const exact = EXACT[base];
  const format = exact ?? NEAREST[base] ?? 'fp8';
  const notes: string[] = [];
  if (!exact) {
    notes.push(NEAREST[base]
      ? `${base} runs as ${FORMAT_NAMES[format]}: graft has no ${base.slice(4)}-bit format, so it keeps more bits than asked`
      : `${base} runs as ${FORMAT_NAMES.fp8}`);
  }
  if (adapter) notes.push(`the accuracy recovery adapter ${adapter} is not applied`);
  return notes.length ? { format, note: notes.join('; ') } : { format };
}
