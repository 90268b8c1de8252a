// graft download (the built CLI) against the local Hub stand-in, and the two ways its progress is shown:
// lines for a log or a pipe, a status line redrawn in place on a terminal.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lineLogger, terminalReporter, type HubEvent } from '../src/hub/index.js';
import { FakeHub } from './helpers/hubServer.js';
import { tempDir } from './helpers/dataset.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'src', 'cli.js');
const DEV = 'black-forest-labs/FLUX.1-dev';
let hub: FakeHub;
let dir: string;

beforeAll(async () => {
  hub = await new FakeHub().start();
  const names = (JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'hub', 'FLUX.1-dev.json'), 'utf8')) as { siblings: { rfilename: string }[] }).siblings.map((s) => s.rfilename);
  hub.add({ id: DEV, files: Object.fromEntries(names.map((n) => [n, n.endsWith('.safetensors') ? randomBytes(30_000) : `{"name": "${n}"}`])) });
  hub.add({ id: 'gated-org/model', gated: true, files: { 'model_index.json': '{}' } });
  dir = tempDir('graft-hub-cli-');
});
afterAll(async () => {
  await hub.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** The built graft with this server and cache (the server answers from this process: run asynchronously). */
function spawnGraft(args: string[], cache = join(dir, 'cache')) {
  const env: NodeJS.ProcessEnv = { ...process.env, HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, HF_HOME: join(dir, 'hf-home'), GRAFT_HOME: join(dir, 'home') };
  for (const k of ['HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_TOKEN_PATH', 'HF_HUB_OFFLINE', 'HUGGINGFACE_HUB_CACHE']) delete env[k];
  const child = spawn('node', [CLI, ...args], { env, cwd: dir });
  const got = { stdout: '', stderr: '' };
  child.stdout.on('data', (d: Buffer) => { got.stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { got.stderr += d.toString(); });
  const done = new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => child.on('close', (status) => resolve({ status, ...got })));
  return { child, got, done };
}

const graft = (...args: string[]) => spawnGraft(args).done;

describe('graft download', () => {
  it('picks FLUX.1 files from the repo id, prints a line per file and the snapshot folder last; a second run downloads nothing', async () => {
    const r = await graft('download', DEV);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    const snapshot = join(dir, 'cache', 'models--black-forest-labs--FLUX.1-dev', 'snapshots', readFileSync(join(dir, 'cache', 'models--black-forest-labs--FLUX.1-dev', 'refs', 'main'), 'utf8'));
    expect(lines[0]).toBe('family flux1 (FLUX.1 (diffusers layout)), from the repo id; --include adds other files');
    expect(lines[1]).toMatch(new RegExp(`^${DEV}@main \\(commit [0-9a-f]{12}\\): 23 file\\(s\\), 0 in the cache, 23 to download \\(\\d+(\\.\\d+)? kB\\)$`));
    expect(lines.filter((l) => l.startsWith('downloading '))).toHaveLength(23);
    expect(lines.filter((l) => l.startsWith('done '))).toHaveLength(23);
    expect(lines).toContain('done transformer/diffusion_pytorch_model-00001-of-00003.safetensors (30.0 kB)');
    expect(lines.at(-2)).toMatch(/^snapshot .* \(\d+(\.\d+)? kB downloaded in \d+s\)$/);
    expect(lines.at(-1)).toBe(snapshot);
    expect(hub.fetched('flux1-dev.safetensors', 'HEAD').concat(hub.fetched('flux1-dev.safetensors'))).toEqual([]);

    const again = await graft('download', DEV);
    expect(again.status).toBe(0);
    expect(again.stdout.trim().split('\n').slice(1)).toEqual([`${DEV}@main (commit ${snapshot.slice(-40, -28)}): 23 file(s), 23 in the cache`, `snapshot ${snapshot} (nothing to download)`, snapshot]);
  });

  it('--include takes the files matching it, and nothing else', async () => {
    const r = await graft('download', DEV, '--include', '*.md', '--include', '.git*', '--revision', 'main');
    expect(r.status).toBe(0);
    expect(r.stdout).not.toContain('family flux1');
    expect(r.stdout).toMatch(/: 3 file\(s\), 0 in the cache, 3 to download/);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('done ')).map((l) => l.split(' ')[1]).sort()).toEqual(['.gitattributes', 'LICENSE.md', 'README.md']);
  });

  it('failures exit 1 with the message; usage errors exit 2', async () => {
    const gated = await graft('download', 'gated-org/model');
    expect(gated.status).toBe(1);
    expect(gated.stderr).toMatch(/^graft: gated-org\/model is gated and no token is set \(HTTP 401 for model_index.json of gated-org\/model\): accept its licence at http:\/\/127\.0\.0\.1:\d+\/gated-org\/model/);
    const family = await graft('download', DEV, '--family', 'qwen_image');
    expect([family.status, family.stderr]).toEqual([2, 'graft: --family qwen_image: graft has no file selection for it (it has: flux1 (flux), zimage (zimage_turbo, zimage:turbo)); name the files with --include\n']);
    const id = await graft('download', 'not-an-id');
    expect([id.status, id.stderr]).toEqual([2, 'graft: "not-an-id" is not a Hub model id: write org/name or org/name@revision (e.g. black-forest-labs/FLUX.1-dev)\n']);
    const tok = await graft('download', 'someone/unknown-model', '--tokenizers-only');
    expect([tok.status, tok.stderr]).toEqual([2, 'graft: --tokenizers-only needs --family (which tokenizers)\n']);
  });
});

describe('graft download, stopped', () => {
  it('Ctrl+C stops it with exit 130, keeping what arrived; the next run resumes with a Range request', async () => {
    const shard = 'transformer/diffusion_pytorch_model-00003-of-00003.safetensors';
    const cache = join(dir, 'cache-stopped');
    hub.faults.set(shard, { stallAfter: 10_000 });
    const run = spawnGraft(['download', DEV, '--include', shard], cache);
    const start = Date.now();
    while (!run.got.stdout.includes(`downloading ${shard}`) && Date.now() - start < 30_000) await new Promise((r) => setTimeout(r, 50));
    // The first 10 kB arrive, then the server stalls.
    await new Promise((r) => setTimeout(r, 500));
    run.child.kill('SIGINT');
    const r = await run.done;
    expect(r.status).toBe(130);
    const partial = join(cache, 'models--black-forest-labs--FLUX.1-dev', 'blobs', `${hub.etag(DEV, shard)}.incomplete`);
    expect(r.stderr).toBe(`\ngraft: stopping the download (the next run resumes it)\ngraft: download of ${DEV} interrupted: what arrived is kept in ${dirname(partial)} (*.incomplete) and the next run resumes it\n`);
    expect(statSync(partial).size).toBe(10_000);
    hub.requests.length = 0;
    const again = await spawnGraft(['download', DEV, '--include', shard], cache).done;
    expect(again.status).toBe(0);
    expect(hub.fetched(shard).map((q) => q.range)).toEqual(['bytes=10000-']);
    expect(again.stdout).toContain(`downloading ${shard} (30.0 kB, resuming at 10.0 kB)`);
  });
});

const progress = (bytes: number, path = 'a.safetensors'): HubEvent => ({ type: 'progress', path, fileBytes: bytes, fileSize: 1000, bytes, totalBytes: 2000, bytesPerSecond: 500 });

describe('progress output', () => {
  it('on a terminal: the status line is redrawn in place, cut to the width, and file lines are written above it', () => {
    let screen = '';
    const t = terminalReporter((s) => { screen += s; }, () => 120);
    t.onProgress(progress(100));
    t.onProgress(progress(600));
    t.onProgress({ type: 'file-done', path: 'a.safetensors', size: 1000, seconds: 0.5 });
    t.finish();
    expect(screen).toBe(
      '100 B / 2.00 kB 5% 500 B/s eta 4s · a.safetensors 10%' +
      '\r\x1b[K600 B / 2.00 kB 30% 500 B/s eta 3s · a.safetensors 60%' +
      '\r\x1b[Kdone a.safetensors (1.00 kB)\n600 B / 2.00 kB 30% 500 B/s eta 3s · a.safetensors 60%' +
      '\r\x1b[K');
    screen = '';
    terminalReporter((s) => { screen += s; }, () => 30).onProgress(progress(100));
    expect(screen).toBe('100 B / 2.00 kB 5% 500 B/s et');
  });

  it('for a log: a line per file event, and the status at most every interval', () => {
    let now = 0;
    const lines: string[] = [];
    const log = lineLogger((l) => lines.push(l), 15_000, () => now);
    log({ type: 'file-start', path: 'a.safetensors', size: 1000, resumeFrom: 0 });
    log(progress(100));
    now = 10_000;
    log(progress(200));
    now = 15_000;
    log(progress(300));
    log({ type: 'retry', path: 'a.safetensors', attempt: 1, of: 5, reason: 'other side closed', resumeFrom: 300 });
    expect(lines).toEqual([
      'downloading a.safetensors (1.00 kB)',
      '300 B / 2.00 kB 15% 500 B/s eta 3s · a.safetensors 30%',
      'a.safetensors: other side closed; retrying from 300 B (attempt 1 of 5)',
    ]);
  });
});
