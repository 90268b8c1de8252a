// Live machine stats for the GPU panel: nvidia-smi queried directly (VRAM, utilization, temperature,
// power), CPU load from the kernel's per-core times (os.cpus), and RAM through systeminformation; the
// panel shows CPU and RAM when there is no GPU.
import { execFile } from 'node:child_process';
import { cpus, type CpuInfo } from 'node:os';

export interface GpuStats {
  index: number;
  name: string;
  memUsedMb: number;
  memTotalMb: number;
  utilPct: number;
  tempC: number;
  powerW: number;
  powerLimitW: number;
}

export interface SystemStats {
  /** null: nvidia-smi is missing or failed (no GPU); []: it answered with no GPUs. */
  gpus: GpuStats[] | null;
  gpuError?: string;
  cpuPct: number | null;
  cores: number | null;
  memUsedMb: number | null;
  memTotalMb: number | null;
}

const QUERY = 'index,name,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw,power.limit';

/** Parse `nvidia-smi --query-gpu=<QUERY> --format=csv,noheader,nounits`; "[N/A]" fields become NaN. */
export function parseGpuStats(text: string): GpuStats[] {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).flatMap((line) => {
    const f = line.split(',').map((x) => x.trim());
    if (f.length < 8) return [];
    const n = (s: string | undefined) => { const v = Number(s); return Number.isFinite(v) ? v : NaN; };
    const index = n(f[0]);
    if (!Number.isInteger(index)) return [];
    return [{ index, name: f[1]!, memUsedMb: n(f[2]), memTotalMb: n(f[3]), utilPct: n(f[4]), tempC: n(f[5]), powerW: n(f[6]), powerLimitW: n(f[7]) }];
  });
}

export function queryGpus(): Promise<{ gpus: GpuStats[] | null; error?: string }> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', [`--query-gpu=${QUERY}`, '--format=csv,noheader,nounits'], { timeout: 3000 }, (err, stdout) => {
      if (err) resolve({ gpus: null, error: (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'nvidia-smi not found' : err.message.split('\n')[0] });
      else resolve({ gpus: parseGpuStats(stdout) });
    });
  });
}

/** Busy share (0-100) of all cores between two os.cpus() readings; null when no time passed. */
export function cpuBusyPct(before: CpuInfo[], after: CpuInfo[]): number | null {
  let busy = 0, total = 0;
  after.forEach((c, i) => {
    const b = before[i];
    if (!b) return;
    const t = (x: CpuInfo['times']) => x.user + x.nice + x.sys + x.idle + x.irq;
    const dt = t(c.times) - t(b.times);
    total += dt;
    busy += dt - (c.times.idle - b.times.idle);
  });
  return total > 0 ? (100 * busy) / total : null;
}

let si: Promise<typeof import('systeminformation')> | undefined;
let lastCpus: CpuInfo[] | undefined;

// systeminformation's currentLoad runs `cat /proc/stat | grep cpu` through a synchronous shell on
// Linux, blocking the TUI once a second (8% of a profile of the Job monitor). os.cpus() reads the
// same counters without a process.
export async function querySystem(): Promise<SystemStats> {
  si ??= import('systeminformation');
  const [g, mod] = await Promise.all([queryGpus(), si]);
  const mem = await mod.mem().catch(() => null);
  const now = cpus();
  const cpuPct = lastCpus ? cpuBusyPct(lastCpus, now) : null;
  lastCpus = now;
  return {
    gpus: g.gpus,
    gpuError: g.error,
    cpuPct,
    cores: now.length || null,
    memUsedMb: mem ? (mem.total - mem.available) / 2 ** 20 : null,
    memTotalMb: mem ? mem.total / 2 ** 20 : null,
  };
}
