// Which GPUs this machine has, for the VRAM warnings. nvidia-smi is asked directly; no GPU means no list.
import { execFile } from 'node:child_process';

export interface Gpu {
  index: number;
  name: string;
  memoryMb: number;
}

/** Parse `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits`. */
export function parseNvidiaSmi(text: string): Gpu[] {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).flatMap((line) => {
    const [index, name, mem] = line.split(',').map((s) => s.trim());
    const i = Number(index), m = Number(mem);
    return Number.isInteger(i) && Number.isFinite(m) && name ? [{ index: i, name, memoryMb: m }] : [];
  });
}

export function probeGpus(): Promise<Gpu[]> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=index,name,memory.total', '--format=csv,noheader,nounits'], { timeout: 5000 }, (err, stdout) => {
      resolve(err ? [] : parseNvidiaSmi(stdout));
    });
  });
}
