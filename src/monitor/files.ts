// What a job folder holds for the monitor: its LoRA files (step checkpoints and the final file), its samples,
// and the end of log.txt as screen lines.
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';

export interface LoraFile {
  file: string;
  bytes: number;
  /** The step of a step checkpoint; null for the final <name>.safetensors. */
  step: number | null;
}

/** A sample prompt as the trainer draws it: job.json's sample.prompts[i] (trigger put in, seed resolved). */
export interface SamplePromptInfo {
  prompt: string;
  seed: number | null;
  width: number | null;
  height: number | null;
}

/** The sample prompts of a prepared job, by index; empty before job.json exists. */
export function samplePrompts(jobDir: string): SamplePromptInfo[] {
  try {
    const job = JSON.parse(readFileSync(join(jobDir, 'job.json'), 'utf8')) as { sample?: { prompts?: unknown } };
    const list = Array.isArray(job.sample?.prompts) ? job.sample.prompts : [];
    const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
    return list.map((p: Record<string, unknown>) => ({ prompt: typeof p?.prompt === 'string' ? p.prompt : '', seed: num(p?.seed), width: num(p?.width), height: num(p?.height) }));
  } catch { return []; }
}

export function jobName(jobDir: string): string | null {
  try {
    const n = (JSON.parse(readFileSync(join(jobDir, 'job.json'), 'utf8')) as { name?: unknown }).name;
    return typeof n === 'string' ? n : null;
  } catch { return null; }
}

/** The LoRA files on disk now (rotated step files are gone), oldest step first, the final file last. */
export function loraFiles(jobDir: string, name: string | null): LoraFile[] {
  if (!name || !existsSync(jobDir)) return [];
  const out: LoraFile[] = [];
  for (const f of readdirSync(jobDir)) {
    if (!f.startsWith(name) || !f.endsWith('.safetensors')) continue;
    const rest = f.slice(name.length, -'.safetensors'.length);
    const m = /^_(\d{9})$/.exec(rest);
    if (rest !== '' && !m) continue;
    try { out.push({ file: join(jobDir, f), bytes: statSync(join(jobDir, f)).size, step: m ? Number(m[1]) : null }); } catch { /* rotated away */ }
  }
  return out.sort((a, b) => (a.step ?? Infinity) - (b.step ?? Infinity));
}

export interface Sample {
  file: string;
  step: number;
  prompt: number;
}

/** samples/<step>_<prompt index>.png (any digits), by step then prompt. */
export function sampleFiles(jobDir: string): Sample[] {
  const dir = join(jobDir, 'samples');
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((f) => {
    const m = /^(?:.*?_)?(\d+)_(\d+)\.png$/.exec(f);
    return m ? [{ file: join(dir, f), step: Number(m[1]), prompt: Number(m[2]) }] : [];
  }).sort((a, b) => a.step - b.step || a.prompt - b.prompt);
}

const ANSI = /\u001B\[[0-?]*[ -/]*[@-~]|\u001B[@-Z\\-_]/g;

/** A terminal stream as the lines a terminal would show: colours dropped, \r overwrites from the line start. */
export function streamLines(text: string): string[] {
  return text.replace(ANSI, '').replace(/\r\n/g, '\n').split('\n').map((line) => {
    const parts = line.split('\r').filter((p) => p !== '');
    return parts[parts.length - 1] ?? '';
  });
}

/** The last lines of log.txt (reading at most the last maxBytes). */
export function logTail(file: string, maxBytes = 64 * 1024): string[] {
  if (!existsSync(file)) return [];
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const start = Math.max(0, size - maxBytes);
    const buf = Buffer.alloc(size - start);
    readSync(fd, buf, 0, buf.length, start);
    const lines = streamLines(buf.toString('utf8'));
    if (start > 0) lines.shift(); // a partial first line
    while (lines.length && lines[lines.length - 1] === '') lines.pop();
    return lines;
  } finally {
    closeSync(fd);
  }
}
