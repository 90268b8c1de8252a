// Problems with one dataset item that train silently wrong if nobody says so: a caption file that is not
// UTF-8, invisible or direction-changing characters in a caption (they become tokens the user never sees),
// a caption longer than the text encoder reads (the rest is cut), a picture smaller than every resolution
// asked for (it trains at its own, smaller size). Reported per item by `graft prepare` and the Datasets screen.

/** Characters a caption should not hold: zero-width and direction controls, other invisible format characters, C0/C1 controls. */
const INVISIBLE: Record<number, string> = {
  0x00ad: 'soft hyphen', 0x200b: 'zero-width space', 0x200c: 'zero-width non-joiner', 0x200d: 'zero-width joiner',
  0x200e: 'left-to-right mark', 0x200f: 'right-to-left mark', 0x202a: 'left-to-right embedding', 0x202b: 'right-to-left embedding',
  0x202c: 'pop directional formatting', 0x202d: 'left-to-right override', 0x202e: 'right-to-left override',
  0x2060: 'word joiner', 0x2061: 'function application', 0x2062: 'invisible times', 0x2063: 'invisible separator', 0x2064: 'invisible plus',
  0x2066: 'left-to-right isolate', 0x2067: 'right-to-left isolate', 0x2068: 'first strong isolate', 0x2069: 'pop directional isolate',
  0xfeff: 'zero-width no-break space (byte order mark)',
};

const hex = (cp: number) => `U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;

/** Invisible, bidirectional and control characters in a caption, each with its position (1-based character). */
export function invisibleCharacters(text: string): string[] {
  const out: string[] = [];
  let pos = 0;
  for (const ch of text) {
    pos++;
    const cp = ch.codePointAt(0)!;
    const name = INVISIBLE[cp] ?? ((cp < 0x20 && cp !== 0x09 && cp !== 0x0a && cp !== 0x0d) || (cp >= 0x7f && cp < 0xa0) ? 'control character' : undefined);
    if (name) out.push(`${hex(cp)} (${name}) at character ${pos}`);
  }
  return out;
}

export type Decoded = { text: string; problem?: string };

/** A caption file's bytes as text; a file that is not UTF-8 is read with replacement characters and says where it broke. */
export function decodeCaption(bytes: Uint8Array): Decoded {
  try {
    return { text: new TextDecoder('utf-8', { fatal: true }).decode(bytes) };
  } catch {
    const text = new TextDecoder('utf-8').decode(bytes);
    const at = firstBadSequence(bytes);
    return { text, problem: `not valid UTF-8 (byte 0x${(bytes[at] ?? 0).toString(16).padStart(2, '0')} at offset ${at}): save it as UTF-8` };
  }
}

/** Where the first byte sequence that is not UTF-8 starts (a lead byte with too few continuation bytes, or a stray one). */
function firstBadSequence(b: Uint8Array): number {
  for (let i = 0; i < b.length;) {
    const c = b[i]!;
    const n = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
    if (n < 0 || i + n >= b.length + (n === 0 ? 1 : 0)) return i;
    for (let k = 1; k <= n; k++) if ((b[i + k]! & 0xc0) !== 0x80) return i;
    i += n + 1;
  }
  return b.length;
}

/** A caption's length in one text encoder's tokens (special tokens included), against what it reads. */
export interface TokenLength {
  name: string;
  count: number;
  max: number;
}

/**
 * Each encoder that cuts the caption, and by how much. Beside a longer encoder that reads it whole, a short
 * one being cut is normal (FLUX.1's CLIP reads 77 tokens, its T5 512), and the message says so.
 */
function truncations(lengths: readonly TokenLength[]): string[] {
  if (lengths.length === 1) {
    const [t] = lengths;
    return t!.count > t!.max ? [`caption is ${t!.count} tokens; the text encoder reads ${t!.max}: the rest is cut`] : [];
  }
  const whole = lengths.filter((t) => t.count <= t.max).sort((a, b) => b.max - a.max)[0];
  return lengths.filter((t) => t.count > t.max).map((t) => `caption is ${t.count} tokens for ${t.name}, which reads ${t.max}: the last ${t.count - t.max} are cut` +
    (whole && whole.max > t.max ? ` (normal: ${whole.name} still sees up to ${whole.max})` : ''));
}

/** Everything to say about one caption's text; with its length in each text encoder's tokens, what they cut. */
export function captionProblems(text: string, lengths: readonly TokenLength[] = []): string[] {
  const out: string[] = [];
  const hidden = invisibleCharacters(text);
  if (hidden.length > 0) out.push(`invisible or direction characters: ${hidden.slice(0, 3).join(', ')}${hidden.length > 3 ? ` and ${hidden.length - 3} more` : ''}`);
  return [...out, ...truncations(lengths)];
}

/** A picture smaller than every requested resolution trains at its own size, below what was asked. */
export function sizeProblem(size: { width: number; height: number }, resolutions: readonly number[]): string | undefined {
  const smallest = Math.min(...resolutions);
  if (size.width * size.height >= smallest * smallest) return undefined;
  return `${size.width}x${size.height} px is smaller than every resolution asked for (${[...resolutions].sort((a, b) => a - b).join(', ')}): it trains at its own size`;
}

/** Per item of a scanned dataset: what checks.ts finds, for the Datasets screen. */
export function scanProblems(
  items: readonly { file: string; width?: number; height?: number; captionText?: string; problems?: string[] }[],
  resolutions: readonly number[],
  counter?: { family: string; max: number; count: (text: string) => number },
): { file: string; problems: string[] }[] {
  return items.flatMap((it) => {
    const problems = [...(it.problems ?? [])];
    if (counter && it.captionText) {
      const n = counter.count(it.captionText);
      if (n > counter.max) problems.push(`caption is ${n} tokens; ${counter.family}'s text encoder reads ${counter.max}: the rest is cut`);
    }
    if (it.width !== undefined && it.height !== undefined) {
      const small = sizeProblem({ width: it.width, height: it.height }, resolutions);
      if (small) problems.push(small);
    }
    return problems.length ? [{ file: it.file, problems }] : [];
  });
}
