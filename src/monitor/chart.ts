// The loss chart, drawn with blessed-contrib's braille canvas (drawille-canvas-blessed-contrib: 2 x 4 dots
// per character, a colour per character, its frame() is a plain string Ink can print): the raw loss as a
// band of dots (one per step), the smoothed loss as a thin line over it,
// a y axis with labels at round values, and a scale set by the bulk of the values rather than by one spike
// (the 2nd to 98th percentile; values beyond are marked on the edge they went past).
//
// The x axis runs over the job's steps, not over the steps so far: while a job trains, the columns already
// drawn stay put and only the newest changes, which the screen writer sends as a few changed cells.
import Canvas from 'drawille-canvas-blessed-contrib';

export const COLORS = { raw: 'cyan', smooth: 'yellow', outlier: 'red' } as const;

export interface ChartInput {
  steps: number[];
  raw: number[];
  smooth: number[];
  /** The last step of the x axis (the job's total); the last point's step when absent. */
  xMax?: number;
  log?: boolean;
}

export interface Chart {
  /** One string per character row, with the canvas's colour codes. */
  rows: string[];
  /** Labels of the y axis: the character row each one belongs to, and its text. */
  yLabels: { row: number; text: string }[];
  /** Bounds of the drawn scale, in loss units. */
  low: number;
  high: number;
  /** Raw values beyond the scale, marked on the top or bottom edge. */
  above: number;
  below: number;
  xMin: number;
  xMax: number;
}

export function formatValue(v: number): string {
  if (!Number.isFinite(v)) return '-';
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 10000)) return v.toExponential(1);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(3);
}

export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const i = Math.floor(pos);
  const f = pos - i;
  return i + 1 < sorted.length ? sorted[i]! * (1 - f) + sorted[i + 1]! * f : sorted[i]!;
}

/** The scale: the 2nd to 98th percentile of the raw values, widened to hold the whole smoothed line. */
export function robustRange(raw: number[], smooth: number[]): [number, number] {
  const r = raw.filter(Number.isFinite).sort((a, b) => a - b);
  const s = smooth.filter(Number.isFinite);
  if (r.length === 0 && s.length === 0) return [0, 1];
  const trim = r.length >= 20 ? 0.02 : 0; // a handful of points: show them all
  let lo = Math.min(quantile(r, trim), ...s);
  let hi = Math.max(quantile(r, 1 - trim), ...s);
  if (!Number.isFinite(lo)) lo = Math.min(...s);
  if (!Number.isFinite(hi)) hi = Math.max(...s);
  if (hi === lo) { const pad = Math.abs(lo) * 0.1 || 0.1; lo -= pad; hi += pad; }
  // Out to the next round values: the scale (and every dot drawn with it) changes only when the values cross
  // one, not with each new step.
  const step = niceStep((hi - lo) / 4);
  return [Math.floor(lo / step) * step, Math.ceil(hi / step) * step];
}

/** 1, 2 or 5 times a power of ten, the smallest at least `raw`. */
function niceStep(raw: number): number {
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw * (1 - 1e-9))!;
}

/** Round values between lo and hi to label, about `count` of them: steps of 1, 2 or 5 times a power of ten. */
export function niceTicks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo) || count < 1) return [];
  const step = niceStep((hi - lo) / count);
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** The dots of a straight line from a to b, both ends included. */
function segment(a: [number, number], b: [number, number]): [number, number][] {
  const n = Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
  if (n === 0) return [a];
  return Array.from({ length: n + 1 }, (_, i) => [Math.round(a[0] + ((b[0] - a[0]) * i) / n), Math.round(a[1] + ((b[1] - a[1]) * i) / n)] as [number, number]);
}

/** Draw the series into width x height characters. */
export function lossChart(input: ChartInput, width: number, height: number): Chart {
  const W = Math.max(2, Math.floor(width)), H = Math.max(1, Math.floor(height));
  const px = W * 2, py = H * 4;
  const log = input.log === true;
  const t = (v: number) => (log ? (v > 0 ? Math.log10(v) : NaN) : v);
  const raw = input.raw.map(t), sm = input.smooth.map(t);
  const [lo, hi] = robustRange(raw, sm);
  const xMin = input.steps[0] ?? 0;
  const xMax = Math.max(xMin + 1, input.xMax ?? input.steps[input.steps.length - 1] ?? 1);
  const xOf = (step: number) => Math.min(px - 1, Math.max(0, Math.round(((step - xMin) / (xMax - xMin)) * (px - 1))));
  const yOf = (v: number) => Math.round((1 - (v - lo) / (hi - lo)) * (py - 1));

  // Each raw point is a dot; a point beyond the scale marks the edge it went through, in its column.
  let above = 0, below = 0;
  const dots: [number, number][] = [];
  const marks: [number, number][] = [];
  const smoothByCol = new Map<number, number>();
  input.steps.forEach((step, i) => {
    const x = xOf(step);
    const v = raw[i]!;
    if (Number.isFinite(v)) {
      if (v > hi) { above++; marks.push([x, 0], [x, 1]); } else if (v < lo) { below++; marks.push([x, py - 1], [x, py - 2]); } else dots.push([x, yOf(v)]);
    }
    if (Number.isFinite(sm[i]!)) smoothByCol.set(x, yOf(sm[i]!)); // the column's last smoothed value
  });
  // The smoothed line, column to column.
  const line: [number, number][] = [];
  let prev: [number, number] | undefined;
  for (const [x, y] of [...smoothByCol.entries()].sort((a, b) => a[0] - b[0])) {
    if (prev) line.push(...segment(prev, [x, y]).slice(1)); else line.push([x, y]);
    prev = [x, y];
  }
  // Where the line passes, its character shows the line alone: it reads as a thin line over the band even
  // without colours, and the band's centre is what the line already says.
  const lineCells = new Set(line.map(([x, y]) => `${x >> 1},${y >> 2}`));

  const ctx = new Canvas(px, py);
  const dot = (x: number, y: number) => ctx._canvas.set(x, y);
  ctx.strokeStyle = COLORS.raw;
  for (const [x, y] of dots) if (!lineCells.has(`${x >> 1},${y >> 2}`)) dot(x, y);
  ctx.strokeStyle = COLORS.smooth;
  for (const [x, y] of line) dot(x, y);
  ctx.strokeStyle = COLORS.outlier;
  for (const [x, y] of marks) dot(x, y);
  const rows = ctx._canvas.frame('\n').split('\n').slice(0, H);

  // Labels at round values, about one every three rows, each on the row its value falls in; the top and
  // bottom rows say their own value when no round one is near.
  const value = (v: number) => (log ? 10 ** v : v);
  const yLabels: { row: number; text: string }[] = [];
  for (const v of niceTicks(lo, hi, Math.max(2, Math.floor(H / 3)))) {
    const row = Math.floor(yOf(v) / 4);
    if (row < 0 || row >= H || yLabels.some((l) => Math.abs(l.row - row) < 2)) continue;
    yLabels.push({ row, text: formatValue(value(v)) });
  }
  const rowValue = (row: number) => hi - ((row * 4 + 1.5) / (py - 1)) * (hi - lo); // the middle of the row
  if (!yLabels.some((l) => l.row <= 1)) yLabels.push({ row: 0, text: formatValue(value(rowValue(0))) });
  if (H > 2 && !yLabels.some((l) => l.row >= H - 2)) yLabels.push({ row: H - 1, text: formatValue(value(rowValue(H - 1))) });
  yLabels.sort((a, b) => a.row - b.row);
  return {
    rows, yLabels, above, below, xMin, xMax,
    low: log ? 10 ** lo : lo, high: log ? 10 ** hi : hi,
  };
}

/** The chart without colour codes (tests, logs). */
export function chartText(c: Chart): string[] {
  return c.rows.map((r) => r.replace(/\u001B\[[0-9;]*m/g, ''));
}

/** A gauge bar of `width` cells filled to fraction, with eighth-blocks for the edge. */
export function bar(fraction: number, width: number): string {
  const f = Math.max(0, Math.min(1, Number.isFinite(fraction) ? fraction : 0));
  const eighths = Math.round(f * width * 8);
  const full = Math.floor(eighths / 8);
  const part = eighths % 8;
  return ('█'.repeat(full) + (part ? '▏▎▍▌▋▊▉'[part - 1]! : '')).padEnd(width, '░').slice(0, width);
}
