// A row of Ink's output as terminal cells, each a character with the colours and attributes in effect, so
// that a changed row can be rewritten from its first changed cell to its last instead of whole.

export interface Cell {
  ch: string;
  /** The SGR parameters in effect, canonical ("" for none): equal styles compare equal as strings. */
  style: string;
}

interface Style {
  fg?: string;
  bg?: string;
  attrs: Set<number>;
}

const ATTR_OFF: Record<number, number[]> = { 22: [1, 2], 23: [3], 24: [4], 25: [5], 27: [7], 28: [8], 29: [9] };

function apply(style: Style, params: number[]): void {
  for (let i = 0; i < params.length; i++) {
    const p = params[i]!;
    if (p === 0) { style.fg = undefined; style.bg = undefined; style.attrs.clear(); }
    else if ((p >= 1 && p <= 9)) style.attrs.add(p);
    else if (ATTR_OFF[p]) for (const a of ATTR_OFF[p]!) style.attrs.delete(a);
    else if ((p >= 30 && p <= 37) || (p >= 90 && p <= 97)) style.fg = String(p);
    else if (p === 39) style.fg = undefined;
    else if ((p >= 40 && p <= 47) || (p >= 100 && p <= 107)) style.bg = String(p);
    else if (p === 49) style.bg = undefined;
    else if (p === 38 || p === 48) {
      // 38;5;n or 38;2;r;g;b (and 48 for the background)
      const n = params[i + 1] === 5 ? 2 : params[i + 1] === 2 ? 4 : 0;
      const code = params.slice(i, i + 1 + n).join(';');
      if (p === 38) style.fg = code; else style.bg = code;
      i += n;
    }
  }
}

function key(style: Style): string {
  return [...[...style.attrs].sort((a, b) => a - b), style.fg, style.bg].filter((x) => x !== undefined).join(';');
}

// Characters the frame uses that take one column: ASCII and Latin-1, general punctuation (·, …), arrows,
// technical symbols, box drawing, block elements, geometric shapes, braille. A row with anything else (a
// wide CJK character or an emoji in a file name) is rewritten whole, since its columns cannot be counted here.
function narrow(cp: number): boolean {
  return cp < 0x300 || (cp >= 0x2000 && cp <= 0x23ff) || (cp >= 0x2500 && cp <= 0x25ff) || (cp >= 0x2800 && cp <= 0x28ff);
}

/** The cells of one row, or undefined when a character's width is not known to be one column. */
export function rowCells(line: string): Cell[] | undefined {
  const cells: Cell[] = [];
  const style: Style = { attrs: new Set() };
  let current = '';
  for (let i = 0; i < line.length;) {
    if (line[i] === '\u001B') {
      const m = /^\u001B\[([0-9;]*)m/.exec(line.slice(i, i + 32));
      if (!m) return undefined; // not a colour: some other control this module does not follow
      apply(style, m[1] === '' ? [0] : m[1]!.split(';').map(Number));
      current = key(style);
      i += m[0].length;
      continue;
    }
    const cp = line.codePointAt(i)!;
    if (!narrow(cp) || cp < 0x20) return undefined;
    const ch = String.fromCodePoint(cp);
    cells.push({ ch, style: current });
    i += ch.length;
  }
  return cells;
}

/**
 * What turns row `before` into `after` on a terminal whose cursor is anywhere: the cells from the first
 * that differs to the last, at their column (1-based row `row`), and an erase of what `before` had past
 * the end of `after`. undefined when the two cannot be compared cell by cell.
 */
export function rowPatch(before: string, after: string, row: number): string | undefined {
  const a = rowCells(before), b = rowCells(after);
  if (!a || !b) return undefined;
  let first = 0;
  while (first < b.length && first < a.length && a[first]!.ch === b[first]!.ch && a[first]!.style === b[first]!.style) first++;
  if (first === a.length && first === b.length) return '';
  // Rows of one length share their unchanged end; a shorter or longer row is written to its end.
  let lastB = b.length - 1;
  if (a.length === b.length) while (lastB > first && a[lastB]!.ch === b[lastB]!.ch && a[lastB]!.style === b[lastB]!.style) lastB--;
  let s = `\u001B[${row};${first + 1}H`;
  let style: string | undefined;
  for (let i = first; i <= lastB; i++) {
    const c = b[i]!;
    if (c.style !== style) { s += `\u001B[0${c.style ? `;${c.style}` : ''}m`; style = c.style; }
    s += c.ch;
  }
  if (style) s += '\u001B[0m';
  if (b.length < a.length) s += '\u001B[K';
  return s;
}
