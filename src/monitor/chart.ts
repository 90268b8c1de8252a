// A line chart drawn with braille dots (2 x 4 dots per character), as plain strings: the raw series as a
// band (each column spans the values that fall into it) and the smoothed series as a line over it.
// Written here rather than taken from a blessed widget: it must draw inside Ink's frame, two colours per chart.

const DOT = [[0x01, 0x02, 0x04, 0x40], [0x08, 0x10, 0x20, 0x80]] as const;

export interface ChartSegment {
  text: string;
  /** Which series the dots of this run of cells belong to: the smoothed line wins where both are. */
  series: 'raw' | 'smooth' | 'none';
}

export interface Chart {
  rows: ChartSegment[][];
  /** Labels of the top, middle and bottom rows (values, in the chart's own scale). */
  top: number;
  bottom: number;
  log: boolean;
}

export function formatValue(v: number): string {
  if (!Number.isFinite(v)) return '-';
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 10000)) return v.toExponential(1);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(3);
}

/** Draw `raw` and `smooth` (same length, one value per step) into width x height characters. */
export function lineChart(raw: number[], smooth: number[], width: number, height: number, log = false): Chart {
  const W = Math.max(1, width), H = Math.max(1, height);
  const px = W * 2, py = H * 4;
  const t = (v: number) => (log ? (v > 0 ? Math.log10(v) : NaN) : v);
  const r = raw.map(t), s = smooth.map(t);
  const finite = [...r, ...s].filter(Number.isFinite);
  const grid = { raw: new Uint8Array(W * H), smooth: new Uint8Array(W * H) };
  const lo = finite.length ? Math.min(...finite) : 0;
  const hi0 = finite.length ? Math.max(...finite) : 1;
  const hi = hi0 === lo ? lo + (Math.abs(lo) || 1) * 0.1 : hi0;
  const yOf = (v: number) => Math.round((1 - (v - lo) / (hi - lo)) * (py - 1));
  const set = (which: 'raw' | 'smooth', x: number, y: number) => {
    if (x < 0 || x >= px || y < 0 || y >= py) return;
    grid[which][Math.floor(y / 4) * W + Math.floor(x / 2)]! |= DOT[x % 2]![y % 4]!;
  };
  const n = r.length;
  const colOf = (i: number) => (n <= 1 ? 0 : Math.round((i / (n - 1)) * (px - 1)));
  // Raw: every point, and a vertical run between neighbours that land in the same or the next column.
  let prev: [number, number] | undefined;
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(r[i]!)) { prev = undefined; continue; }
    const x = colOf(i), y = yOf(r[i]!);
    if (prev && x - prev[0] <= 1) for (let yy = Math.min(y, prev[1]); yy <= Math.max(y, prev[1]); yy++) set('raw', x, yy);
    set('raw', x, y);
    prev = [x, y];
  }
  // Smoothed: one value per column (the last point landing there), joined column to column.
  const byCol = new Map<number, number>();
  for (let i = 0; i < n; i++) if (Number.isFinite(s[i]!)) byCol.set(colOf(i), yOf(s[i]!));
  let last: [number, number] | undefined;
  for (const [x, y] of [...byCol.entries()].sort((a, b) => a[0] - b[0])) {
    if (last) {
      const [x0, y0] = last;
      let yPrev = y0;
      for (let xx = x0 + 1; xx <= x; xx++) {
        const yi = Math.round(y0 + ((y - y0) * (xx - x0)) / (x - x0));
        for (let yy = Math.min(yi, yPrev); yy <= Math.max(yi, yPrev); yy++) set('smooth', yy === yi ? xx : xx - 1, yy);
        yPrev = yi;
      }
    }
    set('smooth', x, y);
    last = [x, y];
  }
  const rows: ChartSegment[][] = [];
  for (let row = 0; row < H; row++) {
    const segs: ChartSegment[] = [];
    for (let col = 0; col < W; col++) {
      const a = grid.raw[row * W + col]!, b = grid.smooth[row * W + col]!;
      const series: ChartSegment['series'] = b ? 'smooth' : a ? 'raw' : 'none';
      const ch = String.fromCharCode(0x2800 + (a | b));
      const lastSeg = segs[segs.length - 1];
      if (lastSeg && lastSeg.series === series) lastSeg.text += ch;
      else segs.push({ text: ch, series });
    }
    rows.push(segs);
  }
  return { rows, top: log ? 10 ** hi : hi, bottom: log ? 10 ** lo : lo, log };
}

/** The chart as plain text lines (tests, logs). */
export function chartText(c: Chart): string[] {
  return c.rows.map((segs) => segs.map((s) => s.text).join(''));
}

/** A gauge bar of `width` cells filled to fraction, with eighth-blocks for the edge. */
export function bar(fraction: number, width: number): string {
  const f = Math.max(0, Math.min(1, Number.isFinite(fraction) ? fraction : 0));
  const eighths = Math.round(f * width * 8);
  const full = Math.floor(eighths / 8);
  const part = eighths % 8;
  return ('█'.repeat(full) + (part ? '▏▎▍▌▋▊▉'[part - 1]! : '')).padEnd(width, '░').slice(0, width);
}
