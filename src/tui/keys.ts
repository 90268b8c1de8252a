// Terminal input as keys: a read from the terminal may hold several keys at once (`jjj`, Down then Enter,
// text then Enter): an SSH link, key repeat or a paste delivers them so. Each escape sequence is one key,
// every other character is one key.

const ESC = '\u001B';

/** Where the escape sequence starting at i ends (exclusive), or -1 when the text ends before it does. */
function sequenceEnd(text: string, i: number): number {
  const kind = text[i + 1];
  if (kind === undefined) return -1;
  if (kind === '[') {
    let j = i + 2;
    if (text[j] === '[') j++; // the Linux console's function keys: ESC [ [ A
    for (; j < text.length; j++) {
      const c = text.charCodeAt(j);
      if (c >= 0x40 && c <= 0x7e) return j + 1; // final byte
      if (c < 0x20 || c > 0x3f) return j; // not a CSI byte: the sequence was cut short; keep what came
    }
    return -1;
  }
  if (kind === 'O') return i + 3 <= text.length ? i + 3 : -1;
  if (kind === ESC) {
    // Alt (Meta) with an escape sequence, e.g. ESC ESC [ A; a double Escape when nothing follows.
    const inner = sequenceEnd(text, i + 1);
    return inner === -1 && i + 2 < text.length ? i + 2 : inner;
  }
  // Alt with a character.
  return i + 1 + (text.codePointAt(i + 1)! > 0xffff ? 2 : 1);
}

/** The keys in `text`, in order; `rest` is an escape sequence cut off at the end, to be completed by the next read. */
export function splitKeys(text: string): { keys: string[]; rest: string } {
  const keys: string[] = [];
  let i = 0;
  while (i < text.length) {
    if (text[i] === ESC) {
      const end = sequenceEnd(text, i);
      if (end === -1) return { keys, rest: text.slice(i) };
      keys.push(text.slice(i, end));
      i = end;
    } else {
      const cp = text.codePointAt(i)!;
      const n = cp > 0xffff ? 2 : 1;
      keys.push(text.slice(i, i + n));
      i += n;
    }
  }
  return { keys, rest: '' };
}
