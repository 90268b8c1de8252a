// What the end-to-end tests share: a model folder as the files of a Hub repo, and the built graft run
// against the local Hub stand-in with a cache of the test's own.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

export const CLI = join(import.meta.dirname, '..', '..', 'dist', 'src', 'cli.js');

/** Every file under dir, by its path in the repo. */
export function repoFiles(dir: string): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  const walk = (d: string) => {
    for (const f of readdirSync(d)) {
      const p = join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else out[relative(dir, p)] = readFileSync(p);
    }
  };
  walk(dir);
  return out;
}

export interface Run { status: number | null; stdout: string; stderr: string }

/**
 * The built graft in `root` against the Hub at `hubUrl`, with its own Hub cache and GRAFT_HOME under root
 * and no token; HF_HUB_OFFLINE only when extraEnv sets it.
 */
export function graftAgainstHub(hubUrl: string, root: string, args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, HF_ENDPOINT: hubUrl, HF_HUB_CACHE: join(root, 'hf-cache'), HF_HOME: join(root, 'hf-home'), GRAFT_HOME: join(root, 'home'), ...extraEnv };
  for (const k of ['HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_TOKEN_PATH', 'HUGGINGFACE_HUB_CACHE']) delete env[k];
  if (!('HF_HUB_OFFLINE' in extraEnv)) delete env.HF_HUB_OFFLINE;
  const child = spawn('node', [CLI, ...args], { env, cwd: root });
  const got = { stdout: '', stderr: '' };
  child.stdout.on('data', (d: Buffer) => { got.stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { got.stderr += d.toString(); });
  return new Promise((done) => child.on('close', (status) => done({ status, ...got })));
}
