// graft's Hub download (src/hub) against a local server speaking the Hub's endpoints (test/helpers/hubServer.ts):
// the standard cache layout, resume with Range after a cut, checksums, offline mode, errors, tokens, disk space.
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ensureModelFiles, selectFiles, type EnsureOptions, type HubEvent } from '../src/hub/index.js';
import { FakeHub, gitBlobId, sha256 } from './helpers/hubServer.js';
import { tempDir } from './helpers/dataset.js';

const DEV = 'black-forest-labs/FLUX.1-dev';

/** FLUX.1-dev's files (names from the real repo), with small made-up contents; the shards big enough to cut. */
function fluxFiles(): Record<string, Buffer | string> {
  const names = (JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'hub', 'FLUX.1-dev.json'), 'utf8')) as { siblings: { rfilename: string }[] }).siblings.map((s) => s.rfilename);
  const files: Record<string, Buffer | string> = {};
  for (const n of names) files[n] = n.endsWith('.safetensors') ? randomBytes(n.includes('transformer') ? 300_000 : 40_000) : `{"file": ${JSON.stringify(n)}}\n`;
  files['transformer/diffusion_pytorch_model.safetensors.index.json'] = JSON.stringify({ weight_map: { a: 'diffusion_pytorch_model-00001-of-00003.safetensors', b: 'diffusion_pytorch_model-00002-of-00003.safetensors', c: 'diffusion_pytorch_model-00003-of-00003.safetensors' } });
  files['text_encoder_2/model.safetensors.index.json'] = JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } });
  return files;
}

const SHARD = 'transformer/diffusion_pytorch_model-00002-of-00003.safetensors';

let hub: FakeHub;
let dir: string;
let cache: string;
let commit: string;

beforeEach(async () => {
  hub = await new FakeHub().start();
  commit = hub.add({ id: DEV, files: fluxFiles() }).commit;
  dir = tempDir('graft-hub-');
  cache = join(dir, 'hub-cache');
});
afterEach(async () => {
  await hub.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** The options of a test run: this server, this cache, no token from the machine, fast retries. */
function opts(extra: Partial<EnsureOptions> & { envExtra?: NodeJS.ProcessEnv } = {}): EnsureOptions {
  const { envExtra, ...rest } = extra;
  return { env: { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, HF_HOME: join(dir, 'hf-home'), ...envExtra }, cwd: dir, retryDelayMs: 5, family: 'flux1', ...rest };
}

const repoDir = () => join(cache, 'models--black-forest-labs--FLUX.1-dev');
const blobs = () => (existsSync(join(repoDir(), 'blobs')) ? readdirSync(join(repoDir(), 'blobs')).sort() : []);

describe('graft hub download', () => {
  it('fetches the FLUX selection into HF_HUB_CACHE in the standard layout: blobs by ETag, refs/main, relative snapshot links', async () => {
    const events: HubEvent[] = [];
    const r = await ensureModelFiles(DEV, opts({ onProgress: (e) => events.push(e) }));
    expect(r.commit).toBe(commit);
    expect(r.snapshotDir).toBe(join(repoDir(), 'snapshots', commit));
    expect(r.files).toHaveLength(23);
    expect(readFileSync(join(repoDir(), 'refs', 'main'), 'utf8')).toBe(commit);
    for (const f of r.files) {
      const link = join(r.snapshotDir, f);
      const etag = hub.etag(DEV, f);
      expect(lstatSync(link).isSymbolicLink(), f).toBe(true);
      expect(readlinkSync(link), f).toBe(`${'../'.repeat(f.split('/').length + 1)}blobs/${etag}`);
      expect(readFileSync(link).equals(hub.file(DEV, f)), f).toBe(true);
    }
    // LFS files are named by their sha256, plain git files by their git blob id.
    expect(hub.etag(DEV, SHARD)).toBe(sha256(hub.file(DEV, SHARD)));
    expect(hub.etag(DEV, 'model_index.json')).toBe(gitBlobId(hub.file(DEV, 'model_index.json')));
    expect(blobs()).toEqual(r.files.map((f) => hub.etag(DEV, f)).sort());
    // LFS files (weights, spiece.model) came from the CDN the Hub redirected to; the root single files were never asked for.
    const lfs = r.files.filter((f) => hub.etag(DEV, f).length === 64);
    expect(lfs).toHaveLength(8);
    expect(hub.requests.filter((q) => q.path.startsWith('/cdn/')).map((q) => q.path.split('/').slice(3).join('/')).sort()).toEqual(lfs);
    for (const never of ['flux1-dev.safetensors', 'ae.safetensors', 'dev_grid.jpg', 'README.md']) {
      expect(hub.requests.filter((q) => q.path.endsWith(`/${never}`)), never).toEqual([]);
    }
    const asked = new Set(hub.requests.filter((q) => q.path.includes('/resolve/')).map((q) => q.path.split(`/resolve/${commit}/`)[1]));
    expect([...asked].sort()).toEqual(r.files);
    expect(events[0]).toMatchObject({ type: 'plan', commit, downloadBytes: r.files.reduce((n, f) => n + hub.file(DEV, f).length, 0), resumedBytes: 0 });
    expect(events.filter((e) => e.type === 'file-done')).toHaveLength(23);
    expect(events.at(-1)).toMatchObject({ type: 'done', snapshotDir: r.snapshotDir, downloadedBytes: r.downloadedBytes });
    const last = events.filter((e) => e.type === 'progress').at(-1);
    expect(last).toMatchObject({ bytes: r.downloadedBytes, totalBytes: r.downloadedBytes });
  });

  it('a second run downloads nothing: one question for the commit, no file requests', async () => {
    await ensureModelFiles(DEV, opts());
    hub.requests.length = 0;
    const again = await ensureModelFiles(DEV, opts());
    expect(again.downloadedBytes).toBe(0);
    expect(hub.requests.map((q) => `${q.method} ${q.path}`)).toEqual([`GET /api/models/${DEV}/revision/main`]);
  });

  it('a file whose bytes the cache already holds (another revision, another tool) is linked, not downloaded', async () => {
    await ensureModelFiles(DEV, opts({ tokenizersOnly: true }));
    const other = 'someone/flux-copy';
    const copyCommit = hub.add({ id: other, files: Object.fromEntries(['model_index.json', 'tokenizer/vocab.json'].map((f) => [f, hub.file(DEV, f)])) }).commit;
    // The same bytes in the other repo's own blobs folder: linked there, never fetched.
    const otherBlobs = join(cache, 'models--someone--flux-copy', 'blobs');
    mkdirSync(otherBlobs, { recursive: true });
    writeFileSync(join(otherBlobs, hub.etag(DEV, 'tokenizer/vocab.json')), hub.file(DEV, 'tokenizer/vocab.json'));
    hub.requests.length = 0;
    const r = await ensureModelFiles(other, opts({ family: undefined }));
    expect(r.files).toEqual(['model_index.json', 'tokenizer/vocab.json']);
    expect(readFileSync(join(r.snapshotDir, 'tokenizer/vocab.json')).equals(hub.file(DEV, 'tokenizer/vocab.json'))).toBe(true);
    expect(hub.fetched('tokenizer/vocab.json', 'GET')).toEqual([]);
    expect(hub.fetched('model_index.json', 'GET')).toHaveLength(1);
    expect(r.commit).toBe(copyCommit);
  });

  it('a renamed repo is followed to its new name (a redirect within the Hub); the cache keeps the name asked for', async () => {
    hub.renamed.set('black-forest-labs/FLUX.1-old', DEV);
    const r = await ensureModelFiles('black-forest-labs/FLUX.1-old', opts({ tokenizersOnly: true }));
    expect(r.snapshotDir).toBe(join(cache, 'models--black-forest-labs--FLUX.1-old', 'snapshots', commit));
    expect(readFileSync(join(r.snapshotDir, 'tokenizer_2/spiece.model')).equals(hub.file(DEV, 'tokenizer_2/spiece.model'))).toBe(true);
    expect(hub.requests.filter((q) => q.path.includes('FLUX.1-old/resolve/')).length).toBe(9);
  });

  it('an answer without X-Repo-Commit is not taken for the Hub (a proxy page, a wrong HF_ENDPOINT)', async () => {
    hub.dropHeaders.add('x-repo-commit');
    await expect(ensureModelFiles(DEV, opts({ files: ['model_index.json'], family: undefined }))).rejects.toThrow(
      `the answer for model_index.json of ${DEV} (${hub.url}/${DEV}/resolve/${commit}/model_index.json) has no X-Repo-Commit header, so it does not come from a Hugging Face Hub: check HF_ENDPOINT (${hub.url}) and any proxy`);
    expect(blobs()).toEqual([]);
  });

  it('a partial file whose blob another process completed is removed', async () => {
    await ensureModelFiles(DEV, opts({ tokenizersOnly: true }));
    const etag = hub.etag(DEV, 'tokenizer_2/spiece.model');
    writeFileSync(join(repoDir(), 'blobs', `${etag}.incomplete`), 'left by an interrupted run');
    writeFileSync(join(repoDir(), 'blobs', `${etag}.1a2b3c4d.incomplete`), 'huggingface_hub 2 names its own partial files so: not ours to remove');
    await ensureModelFiles(DEV, opts({ tokenizersOnly: true }));
    expect(blobs().filter((b) => b.startsWith(etag))).toEqual([etag, `${etag}.1a2b3c4d.incomplete`]);
  });

  it('a connection cut in the middle of a file is resumed with a Range request from where it stopped, and the file verifies', async () => {
    hub.faults.set(SHARD, { cutAfter: 100_000 });
    const events: HubEvent[] = [];
    const r = await ensureModelFiles(DEV, opts({ onProgress: (e) => events.push(e) }));
    const gets = hub.fetched(SHARD);
    expect(gets.map((g) => g.range)).toEqual([undefined, 'bytes=100000-']);
    expect(events.filter((e) => e.type === 'retry')).toMatchObject([{ path: SHARD, attempt: 1, resumeFrom: 100_000 }]);
    const blob = readFileSync(join(repoDir(), 'blobs', hub.etag(DEV, SHARD)));
    expect(sha256(blob)).toBe(hub.etag(DEV, SHARD));
    expect(readFileSync(join(r.snapshotDir, SHARD)).equals(hub.file(DEV, SHARD))).toBe(true);
    expect(blobs().some((b) => b.endsWith('.incomplete'))).toBe(false);
  });

  it('an interrupted run keeps blobs/<etag>.incomplete; the next run continues it with Range from the partial size', async () => {
    hub.faults.set(SHARD, { cutAfter: 123_456 });
    const partial = join(repoDir(), 'blobs', `${hub.etag(DEV, SHARD)}.incomplete`);
    const err = await ensureModelFiles(DEV, opts({ retries: 0, concurrency: 1 })).catch((e: Error) => e.message);
    expect(err).toMatch(`the download of ${SHARD} from ${new URL(hub.cdnUrl).host} broke off (`);
    expect(err).toMatch(`); the 123456 bytes that arrived are kept in ${partial}: run again to resume from there`);
    expect(lstatSync(partial).size).toBe(123_456);
    expect(existsSync(join(repoDir(), 'blobs', hub.etag(DEV, SHARD)))).toBe(false);
    expect(existsSync(join(repoDir(), 'snapshots', commit, SHARD))).toBe(false);
    hub.requests.length = 0;
    const events: HubEvent[] = [];
    const r = await ensureModelFiles(DEV, opts({ onProgress: (e) => events.push(e) }));
    expect(hub.fetched(SHARD).map((g) => g.range)).toEqual(['bytes=123456-']);
    expect(events[0]).toMatchObject({ type: 'plan', resumedBytes: 123_456 });
    expect(events.find((e) => e.type === 'file-start' && e.path === SHARD)).toMatchObject({ resumeFrom: 123_456 });
    expect(sha256(readFileSync(join(r.snapshotDir, SHARD)))).toBe(hub.etag(DEV, SHARD));
    expect(existsSync(partial)).toBe(false);
  });

  it('a server that answers a Range request with the whole file makes graft start the file over, and it still verifies', async () => {
    hub.faults.set(SHARD, { cutAfter: 50_000 });
    await expect(ensureModelFiles(DEV, opts({ retries: 0, concurrency: 1 }))).rejects.toThrow('broke off');
    hub.faults.set(SHARD, { ignoreRange: true });
    hub.requests.length = 0;
    const r = await ensureModelFiles(DEV, opts());
    expect(hub.fetched(SHARD).map((g) => g.range)).toEqual(['bytes=50000-', undefined]);
    expect(readFileSync(join(r.snapshotDir, SHARD)).equals(hub.file(DEV, SHARD))).toBe(true);
  });

  it('a CDN link that stopped working (403: its signature expired) is asked for anew, and the download goes on', async () => {
    hub.faults.set(SHARD, { status: 403 });
    const events: HubEvent[] = [];
    const r = await ensureModelFiles(DEV, opts({ files: [SHARD], family: undefined, onProgress: (e) => events.push(e) }));
    expect(hub.fetched(SHARD, 'HEAD')).toHaveLength(2);
    expect(hub.fetched(SHARD).map((g) => g.range)).toEqual([undefined, undefined]);
    expect(events.filter((e) => e.type === 'retry')).toMatchObject([{ reason: `HTTP 403 from ${new URL(hub.cdnUrl).host}` }]);
    expect(readFileSync(join(r.snapshotDir, SHARD)).equals(hub.file(DEV, SHARD))).toBe(true);
  });

  it('a connection that stalls is dropped and resumed', async () => {
    hub.faults.set(SHARD, { stallAfter: 70_000 });
    const r = await ensureModelFiles(DEV, opts({ stallMs: 300 }));
    expect(hub.fetched(SHARD).map((g) => g.range)).toEqual([undefined, 'bytes=70000-']);
    expect(readFileSync(join(r.snapshotDir, SHARD)).equals(hub.file(DEV, SHARD))).toBe(true);
  });

  it('corrupted bytes are refused: neither a blob nor a partial file is kept, and no snapshot link is made', async () => {
    const vae = 'vae/diffusion_pytorch_model.safetensors';
    hub.faults.set(vae, { corrupt: true });
    const err = await ensureModelFiles(DEV, opts()).catch((e: Error) => e);
    expect(String(err)).toMatch(new RegExp(`vae/diffusion_pytorch_model.safetensors of ${DEV} arrived corrupted: its sha256 is [0-9a-f]{64}, the Hub's is ${hub.etag(DEV, vae)};`));
    expect(blobs().filter((b) => b.startsWith(hub.etag(DEV, vae)))).toEqual([]);
    expect(existsSync(join(repoDir(), 'snapshots', commit, vae))).toBe(false);
    // A plain git file is checked by its git blob id.
    rmSync(cache, { recursive: true });
    hub.faults.set('model_index.json', { corrupt: true });
    const err2 = await ensureModelFiles(DEV, opts({ files: ['model_index.json'], family: undefined })).catch((e: Error) => e);
    expect(String(err2)).toContain(`model_index.json of ${DEV} arrived corrupted: its git-sha1 is`);
    expect(blobs().filter((b) => b.startsWith(hub.etag(DEV, 'model_index.json')))).toEqual([]);
  });

  it('more bytes than the Hub announced are refused, and the partial file is deleted', async () => {
    hub.faults.set(SHARD, { extraBytes: 10 });
    await expect(ensureModelFiles(DEV, opts({ files: [SHARD], family: undefined }))).rejects.toThrow(
      `the server sent more than the ${hub.file(DEV, SHARD).length} bytes the Hub announced (${hub.cdnUrl}/cdn/black-forest-labs--FLUX.1-dev/${SHARD}?X-Amz-Signature=fake): the partial file was deleted; run again`);
    expect(blobs()).toEqual([]);
  });

  it('offline (HF_HUB_OFFLINE=1) with the server stopped: refs/main leads to the snapshot; a missing file is named', async () => {
    const online = await ensureModelFiles(DEV, opts());
    await hub.stop();
    const offline = { envExtra: { HF_HUB_OFFLINE: '1' } };
    const r = await ensureModelFiles(DEV, opts(offline));
    expect(r).toEqual({ ...online, downloadedBytes: 0 });
    // Only the tokenizers: fewer files, same snapshot.
    expect((await ensureModelFiles(DEV, opts({ ...offline, tokenizersOnly: true }))).files).toHaveLength(9);
    unlinkSync(join(r.snapshotDir, 'text_encoder_2/model-00002-of-00002.safetensors'));
    await expect(ensureModelFiles(DEV, opts(offline))).rejects.toThrow(
      `offline mode is on (HF_HUB_OFFLINE=1) and the cached ${DEV}@main (${r.snapshotDir}) lacks text_encoder_2/model-00002-of-00002.safetensors (named by text_encoder_2/model.safetensors.index.json): run graft download ${DEV} once with the network, or unset HF_HUB_OFFLINE`);
    await expect(ensureModelFiles(DEV, opts({ ...offline, files: ['vae/missing.json'], family: undefined }))).rejects.toThrow('lacks vae/missing.json');
    await expect(ensureModelFiles(DEV, opts({ ...offline, revision: 'v2' }))).rejects.toThrow(
      `offline mode is on (HF_HUB_OFFLINE=1) and the cache has no ${DEV} at revision v2 (no ${join(repoDir(), 'refs', 'v2')})`);
    // Restarted so afterEach can stop it.
    hub = await new FakeHub().start();
  });

  it('a network failure names the URL, and suggests HF_HUB_OFFLINE when the cache holds the files', async () => {
    await ensureModelFiles(DEV, opts({ tokenizersOnly: true }));
    const url = hub.url;
    await hub.stop();
    await expect(ensureModelFiles(DEV, opts({ tokenizersOnly: true }))).rejects.toThrow(
      `cannot reach ${url}/api/models/${DEV}/revision/main (ECONNREFUSED): the cache already holds these files (${join(repoDir(), 'snapshots', commit)}): set HF_HUB_OFFLINE=1 to use them without the network`);
    // The whole model is not in the cache: no such suggestion.
    await expect(ensureModelFiles(DEV, opts())).rejects.toThrow(`cannot reach ${url}/api/models/${DEV}/revision/main (ECONNREFUSED): check the network, or HF_ENDPOINT if a mirror is meant`);
    hub = await new FakeHub().start();
  });

  it('a gated repo: 401 without a token, 403 with one lacking access; both name the page to accept the licence on and how to set the token', async () => {
    hub.add({ id: 'gated-org/model', gated: true, files: { 'model_index.json': '{}' } });
    const tokenFile = join(dir, 'hf-home', 'token');
    await expect(ensureModelFiles('gated-org/model', opts({ family: undefined }))).rejects.toThrow(
      `gated-org/model is gated and no token is set (HTTP 401 for model_index.json of gated-org/model): accept its licence at ${hub.url}/gated-org/model with your account, ` +
      `then set HF_TOKEN=hf_... (a read token from ${hub.url}/settings/tokens) or run huggingface-cli login (it writes ${tokenFile})`);
    await expect(ensureModelFiles('gated-org/model', opts({ family: undefined, envExtra: { HF_TOKEN: 'hf_notgranted' } }))).rejects.toThrow(
      `gated-org/model is gated and the token from HF_TOKEN has no access to it (HTTP 403 for model_index.json of gated-org/model): accept its licence at ${hub.url}/gated-org/model with your account (the token must belong to that account)`);
    hub.tokens.add('hf_granted');
    const r = await ensureModelFiles('gated-org/model', opts({ family: undefined, envExtra: { HF_TOKEN: 'hf_granted' } }));
    expect(r.files).toEqual(['model_index.json']);
  });

  it('a private or missing repo (401 anonymous, 404 logged in), a missing revision and a missing file are each named', async () => {
    await expect(ensureModelFiles('nobody/nothing', opts({ family: undefined }))).rejects.toThrow(
      'nobody/nothing is gated or private (or does not exist) and no token is set (HTTP 401 for nobody/nothing)');
    hub.tokens.add('hf_mine');
    await expect(ensureModelFiles('nobody/nothing', opts({ family: undefined, envExtra: { HF_TOKEN: 'hf_mine' } }))).rejects.toThrow(
      `no model repo nobody/nothing on ${hub.url} that the token from HF_TOKEN can see (HTTP 404): check the id (org/name, as in ${hub.url}/nobody/nothing), or whether the repo is private`);
    await expect(ensureModelFiles(`${DEV}@v9`, opts())).rejects.toThrow(`${DEV} has no revision "v9" (a branch, tag or commit; HTTP 404 for ${hub.url}/api/models/${DEV}/revision/v9)`);
    await expect(ensureModelFiles(DEV, opts({ family: undefined, files: ['transformer/nope.safetensors'] }))).rejects.toThrow(
      `${DEV} at revision main (commit ${commit.slice(0, 12)}) has no transformer/nope.safetensors`);
    hub.add({ id: 'bfl/flux-single', files: { 'flux1-dev.safetensors': randomBytes(20_000), 'model_index.json': '{}' } });
    await expect(ensureModelFiles('bfl/flux-single', opts())).rejects.toThrow(
      'bfl/flux-single at revision main (commit ');
    await expect(ensureModelFiles('bfl/flux-single', opts())).rejects.toThrow('is not a complete FLUX.1 (diffusers layout) repo: it lacks scheduler: scheduler/scheduler_config.json; transformer: transformer/config.json;');
  });

  it('HF_TOKEN goes to the Hub as Authorization: Bearer, never to the CDN; the token file of huggingface-cli login is read when HF_TOKEN is unset', async () => {
    hub.tokens.add('hf_secret');
    await ensureModelFiles(DEV, opts({ envExtra: { HF_TOKEN: 'hf_secret' } }));
    const toHub = hub.requests.filter((q) => !q.path.startsWith('/cdn/'));
    expect(toHub.length).toBeGreaterThan(20);
    expect(new Set(toHub.map((q) => q.authorization))).toEqual(new Set(['Bearer hf_secret']));
    expect(new Set(hub.requests.filter((q) => q.path.startsWith('/cdn/')).map((q) => q.authorization))).toEqual(new Set([undefined]));
    // A private repo, with the token from the file huggingface-cli login writes.
    hub.add({ id: 'me/private', private: true, files: { 'a.json': '{}' } });
    mkdirSync(join(dir, 'hf-home'), { recursive: true });
    writeFileSync(join(dir, 'hf-home', 'token'), 'hf_secret\n');
    hub.requests.length = 0;
    await ensureModelFiles('me/private', opts({ family: undefined }));
    expect(hub.requests.map((q) => q.authorization)).toEqual(['Bearer hf_secret', 'Bearer hf_secret', 'Bearer hf_secret']);
    // A .env in the working folder comes before the token file.
    writeFileSync(join(dir, '.env'), 'OTHER=1\nHF_TOKEN="hf_fromdotenv"\n');
    hub.requests.length = 0;
    await expect(ensureModelFiles('me/private', opts({ family: undefined }))).rejects.toThrow(
      `no model repo me/private on ${hub.url} that the token from ${join(dir, '.env')} can see (HTTP 404): check the id (org/name, as in ${hub.url}/me/private), or whether the repo is private and that token's account has access to it`);
    expect(hub.requests[0]!.authorization).toBe('Bearer hf_fromdotenv');
  });

  it('refuses to start when the cache disk is too small, naming both sizes and the folder', async () => {
    const need = fluxFilesSize();
    await expect(ensureModelFiles(DEV, opts({ freeSpace: () => 1_000_000 }))).rejects.toThrow(
      `not enough disk space: the download needs ${(need / 1e6).toFixed(2)} MB (${need} bytes) more in ${cache}, which has 1.00 MB (1000000 bytes) free: free some space, or set HF_HUB_CACHE to a folder on a larger disk`);
    expect(hub.requests.filter((q) => q.method === 'GET' && (q.path.includes('/resolve/') || q.path.startsWith('/cdn/')))).toEqual([]);
    expect(blobs()).toEqual([]);
    // Resumed bytes are not counted again.
    hub.faults.set(SHARD, { cutAfter: 200_000 });
    await expect(ensureModelFiles(DEV, opts({ retries: 0, concurrency: 1, files: [SHARD], family: undefined }))).rejects.toThrow('broke off');
    const probed: string[] = [];
    await ensureModelFiles(DEV, opts({ files: [SHARD], family: undefined, freeSpace: (d) => { probed.push(d); return 100_000; } }));
    expect(probed).toEqual([join(repoDir(), 'blobs')]);
  });

  it('two downloads of the same model at once fetch each file once (a lock per blob) and both succeed', async () => {
    const [a, b] = await Promise.all([ensureModelFiles(DEV, opts()), ensureModelFiles(DEV, opts())]);
    expect(a.snapshotDir).toBe(b.snapshotDir);
    for (const f of a.files) expect(hub.fetched(f).length, f).toBe(1);
    expect(readdirSync(join(cache, '.locks', 'models--black-forest-labs--FLUX.1-dev'))).toEqual([]);
  });

  it('stops on its signal, keeping what arrived for the next run', async () => {
    hub.faults.set(SHARD, { stallAfter: 60_000 });
    const stop = new AbortController();
    const run = ensureModelFiles(DEV, opts({ files: [SHARD], family: undefined, signal: stop.signal, stallMs: 60_000, onProgress: (e) => { if (e.type === 'progress' && e.path === SHARD && e.fileBytes >= 60_000) stop.abort(); } }));
    await expect(run).rejects.toThrow(`download of ${DEV} interrupted: what arrived is kept in ${join(repoDir(), 'blobs')} (*.incomplete) and the next run resumes it`);
    expect(lstatSync(join(repoDir(), 'blobs', `${hub.etag(DEV, SHARD)}.incomplete`)).size).toBe(60_000);
  });
});

/** Bytes of the FLUX selection on the server. */
function fluxFilesSize(): number {
  const names = Object.keys(fluxFiles());
  return selectFiles(names, { family: 'flux1' }).files.reduce((n, f) => n + hub.file(DEV, f).length, 0);
}
