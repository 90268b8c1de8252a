// Live machine stats for the GPU panel: nvidia-smi queried directly (VRAM, utilization, temperature,
// power), and CPU / RAM through systeminformation, which the panel shows when there is no GPU.
import { execFile } from 'node:child_process';

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

let si: Promise<typeof import('systeminformation')> | undefined;

export async function querySystem(): Promise<SystemStats> {
  si ??= import('systeminformation');
  const [g, mod] = await Promise.all([queryGpus(), si]);
  const [load, mem] = await Promise.all([mod.currentLoad().catch(() => null), mod.mem().catch(() => null)]);
  return {
    gpus: g.gpus,
    gpuError: g.error,
    cpuPct: load ? load.currentLoad : null,
    cores: load ? load.cpus.length : null,
    memUsedMb: mem ? (mem.total - mem.available) / 2 ** 20 : null,
    memTotalMb: mem ? mem.total / 2 ** 20 : null,
  };
}
