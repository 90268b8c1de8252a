// Reading a job's metrics.jsonl as it grows: only the new bytes on each read, a partial last line kept for
// the next one. A resumed run starts again after its last saved step, so points past that step are dropped.
import { closeSync, existsSync, fstatSync, openSync, readSync } from 'node:fs';

export interface StepPoint {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  s_per_step: number;
  grad_norm?: number;
  /** DOP / blank prompt preservation: the adapter's drift from the base model on the preservation prompt. */
  preservation_loss?: number;
  epoch?: number;
  vram_mb?: number;
  rss_mb?: number;
  time?: number;
}

export interface Checkpoint {
  step: number;
  file: string;
  bytes: number;
}

export interface JobMetrics {
  /** Total steps of the job (from the start or step events); null before the first. */
  steps: number | null;
  device: string | null;
  points: StepPoint[];
  checkpoints: Checkpoint[];
  errors: string[];
  warnings: string[];
  samples: { step: number; files: string[] }[];
  end: { status: string; step?: number } | null;
  runs: number;
  /** The trainer's memory plan of this run (bytes it counted before step 1; what it found free, 0: unknown). */
  plan: { total: number; available: number } | null;
}

export function emptyMetrics(): JobMetrics {
  return { steps: null, device: null, points: [], checkpoints: [], errors: [], warnings: [], samples: [], end: null, runs: 0, plan: null };
}

/** Apply one event (a parsed line of metrics.jsonl). */
export function applyEvent(m: JobMetrics, e: Record<string, unknown>): void {
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
  switch (e.event) {
    case 'start': {
      const from = num(e.step) ?? 0;
      m.runs += 1;
      m.end = null;
      m.errors = []; // the errors of this run, not of an earlier one that was resumed
      m.steps = num(e.steps) ?? m.steps;
      m.device = typeof e.device === 'string' ? e.device : m.device;
      if (m.points.length && m.points[m.points.length - 1]!.step > from) m.points = m.points.filter((p) => p.step <= from);
      break;
    }
    case 'step': {
      const step = num(e.step);
      if (step === undefined) break;
      const p: StepPoint = {
        step, steps: num(e.steps) ?? m.steps ?? 0, loss: num(e.loss) ?? NaN, lr: num(e.lr) ?? NaN, s_per_step: num(e.s_per_step) ?? NaN,
        grad_norm: num(e.grad_norm), preservation_loss: num(e.preservation_loss), epoch: num(e.epoch), vram_mb: num(e.vram_mb), rss_mb: num(e.rss_mb), time: num(e.time),
      };
      while (m.points.length && m.points[m.points.length - 1]!.step >= step) m.points.pop();
      m.points.push(p);
      if (p.steps) m.steps = p.steps;
      break;
    }
    case 'checkpoint':
      if (typeof e.file === 'string') {
        m.checkpoints = m.checkpoints.filter((c) => c.file !== e.file);
        m.checkpoints.push({ step: num(e.step) ?? 0, file: e.file, bytes: num(e.bytes) ?? 0 });
      }
      break;
    case 'sample':
      m.samples.push({ step: num(e.step) ?? 0, files: Array.isArray(e.files) ? e.files.map(String) : [] });
      break;
    case 'error':
      m.errors.push(String(e.message ?? 'error'));
      break;
    case 'memory_plan': {
      const p = e.plan as Record<string, unknown> | undefined;
      const total = num(p?.total);
      m.plan = total !== undefined ? { total, available: num(p?.available) ?? 0 } : m.plan;
      break;
    }
    case 'warning':
      m.warnings.push(String(e.message ?? 'warning'));
      break;
    case 'end':
      m.end = { status: String(e.status ?? ''), step: num(e.step) };
      break;
    default:
  }
}

/** Follows one metrics.jsonl; read() returns the whole state, having parsed only what was appended since. */
export class MetricsReader {
  private offset = 0;
  private partial = '';
  private inode = -1;
  private m = emptyMetrics();

  constructor(readonly file: string) {}

  read(): JobMetrics {
    if (!existsSync(this.file)) {
      if (this.offset > 0) this.reset();
      return this.m;
    }
    let fd: number;
    try { fd = openSync(this.file, 'r'); } catch { return this.m; }
    try {
      const st = fstatSync(fd);
      if (st.ino !== this.inode || st.size < this.offset) { this.reset(); this.inode = st.ino; }
      if (st.size === this.offset) return this.m;
      const buf = Buffer.alloc(st.size - this.offset);
      const n = readSync(fd, buf, 0, buf.length, this.offset);
      this.offset += n;
      const text = this.partial + buf.subarray(0, n).toString('utf8');
      const lines = text.split('\n');
      this.partial = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.trim()) continue;
        try { applyEvent(this.m, JSON.parse(line) as Record<string, unknown>); } catch { /* a torn or foreign line */ }
      }
      this.m = { ...this.m };
      return this.m;
    } finally {
      closeSync(fd);
    }
  }

  private reset(): void {
    this.offset = 0;
    this.partial = '';
    this.m = emptyMetrics();
  }
}

/** Read a whole metrics.jsonl once. */
export function readMetrics(file: string): JobMetrics {
  return new MetricsReader(file).read();
}

/** Exponential moving average with bias correction (as TensorBoard smooths), weight in [0, 1). */
export function smooth(values: number[], weight = 0.9): number[] {
  let last = 0;
  let n = 0;
  return values.map((v) => {
    if (!Number.isFinite(v)) return v;
    last = last * weight + (1 - weight) * v;
    n += 1;
    return last / (1 - weight ** n);
  });
}

export interface Progress {
  step: number;
  steps: number | null;
  fraction: number;
  sPerStep: number | null;
  /** Seconds left at the recent pace; null when unknown. */
  etaS: number | null;
  loss: number | null;
  lr: number | null;
}

export function progressOf(m: JobMetrics): Progress {
  const last = m.points[m.points.length - 1];
  const step = m.end?.step ?? last?.step ?? 0;
  const steps = m.steps;
  const recent = m.points.slice(-20).map((p) => p.s_per_step).filter(Number.isFinite).sort((a, b) => a - b);
  const sPerStep = recent.length ? recent[Math.floor(recent.length / 2)]! : null;
  const fraction = steps ? Math.min(1, step / steps) : 0;
  const etaS = steps && sPerStep !== null && !m.end ? Math.max(0, (steps - step) * sPerStep) : null;
  return { step, steps, fraction, sPerStep, etaS, loss: last?.loss ?? null, lr: last?.lr ?? null };
}

export function formatDuration(s: number | null): string {
  if (s === null || !Number.isFinite(s)) return '--';
  const t = Math.round(s);
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m${String(t % 60).padStart(2, '0')}s`;
  return `${Math.floor(t / 3600)}h${String(Math.floor((t % 3600) / 60)).padStart(2, '0')}m`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}
