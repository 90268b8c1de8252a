// Progress of a model download, as events a caller turns into what it shows: graft download's terminal line,
// or plain lines in a job's log (preparation runs in the daemon, whose output goes to the log).

export interface PlannedFile {
  path: string;
  /** Bytes, when known (files already in the cache are not asked about). */
  size?: number;
  /** 'cached': in the snapshot already; 'blob': its bytes are in the cache under another revision; 'download'. */
  source: 'cached' | 'blob' | 'download';
}

export type HubEvent =
  | { type: 'plan'; repo: string; revision: string; commit: string; files: PlannedFile[]; downloadBytes: number; resumedBytes: number }
  | { type: 'file-start'; path: string; size: number; resumeFrom: number }
  | { type: 'progress'; path: string; fileBytes: number; fileSize: number; bytes: number; totalBytes: number; bytesPerSecond: number }
  | { type: 'retry'; path: string; attempt: number; of: number; reason: string; resumeFrom: number }
  | { type: 'waiting'; path: string; holder: string }
  | { type: 'file-done'; path: string; size: number; seconds: number }
  | { type: 'done'; snapshotDir: string; downloadedBytes: number; seconds: number };

export type ProgressCallback = (e: HubEvent) => void;

export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = -1;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${v >= 100 ? v.toFixed(0) : v.toFixed(v >= 10 ? 1 : 2)} ${units[i]}`;
}

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Download speed over the last few seconds (a plain average from the start hides a stall). */
export class SpeedMeter {
  private samples: [t: number, bytes: number][] = [];
  constructor(private readonly windowMs = 5000, private readonly now: () => number = Date.now) {}

  add(totalBytes: number): number {
    const t = this.now();
    this.samples.push([t, totalBytes]);
    while (this.samples.length > 2 && t - this.samples[1]![0] > this.windowMs) this.samples.shift();
    const [t0, b0] = this.samples[0]!;
    return t > t0 ? ((totalBytes - b0) * 1000) / (t - t0) : 0;
  }
}

/**
 * Sums the bytes of every file in flight into 'progress' events, at most one per intervalMs; the last state is
 * still sent after a pause (a stalled connection shows where it stopped).
 */
export class ProgressTracker {
  private bytes: number;
  private fresh = 0;
  private lastEmit = 0;
  private latest: { path: string; fileBytes: number; fileSize: number } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly meter = new SpeedMeter();

  constructor(private readonly emit: ProgressCallback, private readonly totalBytes: number, resumedBytes: number, private readonly intervalMs = 200) {
    this.bytes = resumedBytes;
  }

  /** Bytes downloaded in this run. */
  get downloaded(): number { return this.fresh; }

  /** delta bytes of `path` arrived (fresh: over the network now), or were dropped (negative: a file started over). */
  add(path: string, fileBytes: number, fileSize: number, delta: number, fresh: boolean): void {
    this.bytes += delta;
    if (fresh) this.fresh += delta;
    this.latest = { path, fileBytes, fileSize };
    const wait = this.lastEmit + this.intervalMs - Date.now();
    if (wait <= 0 || fileBytes >= fileSize) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), wait);
  }

  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.latest) return;
    const { path, fileBytes, fileSize } = this.latest;
    this.latest = undefined;
    this.lastEmit = Date.now();
    this.emit({ type: 'progress', path, fileBytes, fileSize, bytes: this.bytes, totalBytes: this.totalBytes, bytesPerSecond: this.meter.add(this.fresh) });
  }
}

/** One line for the events worth a line of their own (a file started, done, retried; the plan; the end). */
export function describeEvent(e: HubEvent): string | undefined {
  switch (e.type) {
    case 'plan': {
      const cached = e.files.filter((f) => f.source !== 'download').length;
      const n = e.files.length - cached;
      return `${e.repo}@${e.revision} (commit ${e.commit.slice(0, 12)}): ${e.files.length} file(s), ${cached} in the cache` +
        (n ? `, ${n} to download (${formatBytes(e.downloadBytes)}${e.resumedBytes ? `, ${formatBytes(e.resumedBytes)} of it resumed from earlier partial files` : ''})` : '');
    }
    case 'file-start':
      return `downloading ${e.path} (${formatBytes(e.size)}${e.resumeFrom ? `, resuming at ${formatBytes(e.resumeFrom)}` : ''})`;
    case 'retry':
      return `${e.path}: ${e.reason}; retrying from ${formatBytes(e.resumeFrom)} (attempt ${e.attempt} of ${e.of})`;
    case 'waiting':
      return `${e.path}: another download of it is running (${e.holder}); waiting for it`;
    case 'file-done':
      return `done ${e.path} (${formatBytes(e.size)}${e.seconds >= 1 ? ` in ${formatSeconds(e.seconds)}, ${formatBytes(e.size / e.seconds)}/s` : ''})`;
    case 'done':
      return `snapshot ${e.snapshotDir}${e.downloadedBytes ? ` (${formatBytes(e.downloadedBytes)} downloaded in ${formatSeconds(e.seconds)})` : ' (nothing to download)'}`;
    default:
      return undefined;
  }
}

/** The status line of a progress event: overall bytes, percent, speed, time left, and the file. */
export function progressLine(e: Extract<HubEvent, { type: 'progress' }>): string {
  const pct = e.totalBytes ? Math.floor((e.bytes / e.totalBytes) * 100) : 100;
  const left = e.bytesPerSecond > 0 ? (e.totalBytes - e.bytes) / e.bytesPerSecond : Infinity;
  return `${formatBytes(e.bytes)} / ${formatBytes(e.totalBytes)} ${pct}% ${formatBytes(e.bytesPerSecond)}/s eta ${formatSeconds(left)} · ${e.path} ${Math.floor((e.fileBytes / Math.max(1, e.fileSize)) * 100)}%`;
}

/**
 * A progress callback that writes lines: one per file event, and the status line at most every intervalMs
 * (for a job's log, or a terminal that is not a TTY).
 */
export function lineLogger(log: (line: string) => void, intervalMs = 15_000, now: () => number = Date.now): ProgressCallback {
  let last = now();
  return (e) => {
    const line = describeEvent(e);
    if (line !== undefined) { log(line); return; }
    if (e.type === 'progress' && now() - last >= intervalMs) {
      last = now();
      log(progressLine(e));
    }
  };
}

/**
 * For a terminal: the file events as lines, and the status line redrawn in place under them (cut to the
 * terminal's width: a wrapped line would not be cleared). `finish` clears it.
 */
export function terminalReporter(write: (s: string) => void, columns: () => number = () => process.stdout.columns || 80): { onProgress: ProgressCallback; finish: () => void } {
  let status = '';
  const clear = () => { if (status) { write('\r\x1b[K'); status = ''; } };
  return {
    onProgress(e) {
      const line = describeEvent(e);
      if (line !== undefined) {
        const redraw = status;
        clear();
        write(`${line}\n`);
        if (redraw && e.type !== 'done') { status = redraw; write(status); }
        return;
      }
      if (e.type === 'progress') {
        clear();
        status = progressLine(e).slice(0, Math.max(20, columns() - 1));
        write(status);
      }
    },
    finish: clear,
  };
}
