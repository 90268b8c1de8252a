// ensureModelFiles: the files a job needs from a Hub repo, in the shared Hugging Face cache, downloading
// only what is missing. Each file is checked against the Hub's checksum before it becomes a blob; a
// partial download stays as blobs/<etag>.incomplete and the next attempt (or run) continues it.
import { existsSync, mkdirSync, readFileSync, renameSync, truncateSync, unlinkSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { revisionInfo } from './api.js';
import { RepoCache } from './cache.js';
import { checksumFor, hashPrefix, type Checksum } from './checksum.js';
import { checkFreeSpace, freeBytes, type FreeSpaceProbe } from './disk.js';
import { HubError, httpErrorMessage, networkErrorMessage } from './errors.js';
import { fileMetadata, NetworkFailure, RangeRefused, resolveUrl, transfer, TransferStatus, type FileMeta } from './http.js';
import { lockBlob } from './lock.js';
import { ProgressTracker, type HubEvent, type PlannedFile, type ProgressCallback } from './progress.js';
import { parseRepoRef } from './repoId.js';
import { familyFiles, indexShards, knownFamilies, selectFiles, type FileChoice } from './select.js';
import { hubSettings, type HubSettings } from './settings.js';

export interface EnsureOptions extends FileChoice {
  /** A branch, tag or commit; else the one written after '@' in the repo id; else main. */
  revision?: string;
  onProgress?: ProgressCallback;
  /** Stops the download; partial files are kept for the next run. */
  signal?: AbortSignal;
  /** Where HF_ENDPOINT, HF_HUB_CACHE, HF_HOME, HF_TOKEN, HF_HUB_OFFLINE are read (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** The folder whose .env may hold HF_TOKEN (default the working folder). */
  cwd?: string;
  /** Free bytes of the cache's filesystem (tests pretend a small disk). */
  freeSpace?: FreeSpaceProbe;
  /** Reconnections per file within one run, each resuming where the last stopped (default 5). */
  retries?: number;
  /** The first wait before reconnecting, doubled each time up to 30 s (default 1000 ms). */
  retryDelayMs?: number;
  /** A connection that sends nothing for this long is dropped and resumed (default 60 s). */
  stallMs?: number;
  /** Files downloaded at once (default 4). */
  concurrency?: number;
}

export interface EnsureResult {
  repo: string;
  revision: string;
  commit: string;
  /** snapshots/<commit> in the cache: the repo's layout, every chosen file present. */
  snapshotDir: string;
  /** The chosen files, as repo paths relative to snapshotDir. */
  files: string[];
  downloadedBytes: number;
}

/** The user stopped the download (the signal): what was downloaded is kept and the next run resumes. */
export class DownloadInterrupted extends HubError {}

interface Job {
  path: string;
  meta: FileMeta;
}

/** Runs fn over items, `limit` at a time; the first failure stops the rest and is thrown once all have settled. */
async function runLimited<T>(items: T[], limit: number, stop: AbortController, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async () => {
    while (next < items.length && failure === undefined) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (e) {
        if (failure === undefined) { failure = e; stop.abort(); }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure;
}

/** A request that met no answer is sent again twice (a keep-alive connection the server dropped, a blip). */
async function patiently<T>(fn: () => Promise<T>, delayMs: number, signal: AbortSignal, tries = 3): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof NetworkFailure) || i >= tries || signal.aborted) throw e;
      await sleep(delayMs * i, undefined, { signal });
    }
  }
}

/** Repo paths are joined onto the cache: nothing that climbs out of the snapshot. */
function checkRepoPath(repo: string, path: string): void {
  if (path === '' || path.startsWith('/') || path.includes('\\') || path.split('/').some((p) => p === '..' || p === '.' || p === '')) {
    throw new HubError(`${repo} lists a file named ${JSON.stringify(path)}, which graft does not write into its cache`);
  }
}

function choiceLabel(c: FileChoice): string {
  const fam = c.family !== undefined ? familyFiles(c.family) : undefined;
  if (fam) return c.tokenizersOnly ? `${fam.label} tokenizers` : fam.label;
  return 'the chosen files';
}

/** The snapshot the cache holds for a revision, when it has every chosen file (and every shard its indexes name). */
function cachedSnapshot(cache: RepoCache, revision: string, choice: FileChoice): { commit: string; files: string[]; missing: string[] } | undefined {
  const commit = cache.commitOf(revision);
  if (!commit || !existsSync(cache.snapshotDir(commit))) return undefined;
  const present = cache.snapshotFiles(commit);
  const sel = selectFiles(present, choice);
  const missing = [...sel.missing];
  const files = new Set(sel.files);
  for (const index of sel.files.filter((f) => f.endsWith('.safetensors.index.json'))) {
    let shards: string[];
    try {
      shards = indexShards(index, readFileSync(cache.snapshotFile(commit, index), 'utf8'));
    } catch (e) {
      missing.push(`${index} (unreadable: ${(e as Error).message})`);
      continue;
    }
    for (const shard of shards) {
      if (present.includes(shard)) files.add(shard);
      else missing.push(`${shard} (named by ${index})`);
    }
  }
  if (files.size === 0 && missing.length === 0) missing.push('any file');
  return { commit, files: [...files].sort(), missing };
}

function offline(cache: RepoCache, repo: string, revision: string, choice: FileChoice, emit: ProgressCallback): EnsureResult {
  const held = cachedSnapshot(cache, revision, choice);
  const onLine = `run graft download ${repo} once with the network, or unset HF_HUB_OFFLINE`;
  if (!held) {
    throw new HubError(`offline mode is on (HF_HUB_OFFLINE=1) and the cache has no ${repo} at revision ${revision} ` +
      `(${cache.commitOf(revision) ? cache.dir : `no ${cache.refFile(revision)}`}): ${onLine}`);
  }
  const snapshotDir = cache.snapshotDir(held.commit);
  if (held.missing.length) {
    throw new HubError(`offline mode is on (HF_HUB_OFFLINE=1) and the cached ${repo}@${revision} (${snapshotDir}) lacks ${held.missing.join(', ')}: ${onLine}`);
  }
  emit({ type: 'plan', repo, revision, commit: held.commit, files: held.files.map((path) => ({ path, source: 'cached' })), downloadBytes: 0, resumedBytes: 0 });
  emit({ type: 'done', snapshotDir, downloadedBytes: 0, seconds: 0 });
  return { repo, revision, commit: held.commit, snapshotDir, files: held.files, downloadedBytes: 0 };
}

interface PlanContext {
  s: HubSettings;
  cache: RepoCache;
  repo: string;
  commit: string;
  revision: string;
  signal: AbortSignal;
  stop: AbortController;
  delay: number;
}

/**
 * What each chosen file needs: nothing (in the snapshot), a link (its blob is in the cache, from another
 * revision or another tool), or a download (of what its partial file lacks). Asks the Hub about the files
 * not in the snapshot only.
 */
async function plan(files: string[], c: PlanContext) {
  const { s, cache, repo, commit } = c;
  const metas = new Map<string, FileMeta>();
  await runLimited(files.filter((f) => !cache.has(commit, f)), 8, c.stop, async (path) => {
    const meta = await patiently(() => fileMetadata({ settings: s, repo, revision: commit, path, url: resolveUrl(s, repo, commit, path) }, c.signal), c.delay, c.signal);
    if (meta.commit !== commit) {
      throw new HubError(`${repo} moved while graft was reading it: ${path} is at commit ${meta.commit}, the revision ${c.revision} at ${commit}; run again`);
    }
    metas.set(path, meta);
  });
  const planned: PlannedFile[] = [];
  const jobs: Job[] = [];
  const counted = new Set<string>();
  let downloadBytes = 0;
  let resumedBytes = 0;
  for (const path of files) {
    const meta = metas.get(path);
    if (!meta) { planned.push({ path, source: 'cached' }); continue; }
    if (existsSync(cache.blob(meta.etag))) {
      cache.link(commit, path, meta.etag);
      planned.push({ path, size: meta.size, source: 'blob' });
      continue;
    }
    planned.push({ path, size: meta.size, source: 'download' });
    jobs.push({ path, meta });
    // Two paths with the same bytes share a blob: it is downloaded once.
    if (counted.has(meta.etag)) continue;
    counted.add(meta.etag);
    const partial = Math.min(cache.partialSize(meta.etag), meta.size);
    downloadBytes += meta.size - partial;
    resumedBytes += partial;
  }
  return { planned, jobs, downloadBytes, resumedBytes };
}

export async function ensureModelFiles(repoId: string, opts: EnsureOptions = {}): Promise<EnsureResult> {
  const s = hubSettings(opts.env ?? process.env, opts.cwd);
  const ref = parseRepoRef(repoId);
  if (!ref) throw new HubError(`${JSON.stringify(repoId)} is not a Hub model id (org/name, or org/name@revision)`);
  if (opts.revision !== undefined && ref.revision !== undefined && opts.revision !== ref.revision) {
    throw new HubError(`${repoId} names revision ${ref.revision} and the revision asked for is ${opts.revision}: give one`);
  }
  const { repo } = ref;
  const revision = opts.revision ?? ref.revision ?? 'main';
  const cache = new RepoCache(s.cacheDir, repo);
  const emit: ProgressCallback = opts.onProgress ?? (() => {});
  const choice: FileChoice = { family: opts.family, tokenizersOnly: opts.tokenizersOnly, include: opts.include, files: opts.files };
  if (choice.family !== undefined && !familyFiles(choice.family)) {
    throw new HubError(`graft has no file selection for the model family ${JSON.stringify(choice.family)} (it has: ${knownFamilies()}); name the files with include patterns instead`);
  }
  if (s.offline) return offline(cache, repo, revision, choice, emit);

  const stop = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  const started = Date.now();
  try {
    const delay = opts.retryDelayMs ?? 1000;
    const info = await patiently(() => revisionInfo(s, repo, revision, signal), delay, signal);
    const { commit } = info;
    const sel = selectFiles(info.files, choice);
    if (sel.missing.length) {
      const what = choice.family !== undefined ? `is not a complete ${choiceLabel(choice)} repo: it lacks` : 'has no';
      throw new HubError(`${repo} at revision ${revision} (commit ${commit.slice(0, 12)}) ${what} ${sel.missing.join('; ')}`);
    }
    if (sel.files.length === 0) throw new HubError(`${repo} at revision ${revision} has no files`);
    sel.files.forEach((f) => checkRepoPath(repo, f));
    cache.writeRef(revision, commit);

    const { planned, jobs, downloadBytes, resumedBytes } = await plan(sel.files, { s, cache, repo, commit, revision, signal, stop, delay });
    emit({ type: 'plan', repo, revision, commit, files: planned, downloadBytes, resumedBytes });
    checkFreeSpace(downloadBytes, s.cacheDir, (dir) => (opts.freeSpace ?? freeBytes)(existsSync(cache.blobsDir) ? cache.blobsDir : dir));
    mkdirSync(cache.blobsDir, { recursive: true });
    cache.dropFinishedPartials();

    const progress = new ProgressTracker(emit, downloadBytes + resumedBytes, resumedBytes);
    const count = progress.add.bind(progress);
    try {
      await runLimited(jobs, opts.concurrency ?? 4, stop, (job) => downloadFile(job, { s, cache, repo, commit, opts, signal, emit, count }));
    } finally {
      progress.flush();
    }

    const snapshotDir = cache.snapshotDir(commit);
    const seconds = (Date.now() - started) / 1000;
    emit({ type: 'done', snapshotDir, downloadedBytes: progress.downloaded, seconds });
    return { repo, revision, commit, snapshotDir, files: sel.files, downloadedBytes: progress.downloaded };
  } catch (e) {
    if (opts.signal?.aborted) {
      throw new DownloadInterrupted(`download of ${repo} interrupted: what arrived is kept in ${cache.blobsDir} (*.incomplete) and the next run resumes it`);
    }
    if (e instanceof NetworkFailure) {
      const held = cachedSnapshot(cache, revision, choice);
      const complete = held && held.missing.length === 0 ? cache.snapshotDir(held.commit) : undefined;
      throw new HubError(networkErrorMessage(e.cause, e.url, complete));
    }
    throw e;
  }
}

interface FileContext {
  s: HubSettings;
  cache: RepoCache;
  repo: string;
  commit: string;
  opts: EnsureOptions;
  signal: AbortSignal;
  emit: (e: HubEvent) => void;
  count: (path: string, fileBytes: number, fileSize: number, delta: number, fresh: boolean) => void;
}

/** A CDN link that stopped working (expired signature): a new HEAD gives a fresh one. */
const staleLink = (e: unknown) => e instanceof TransferStatus && [401, 403, 404, 410].includes(e.status);
const retryable = (e: unknown) => e instanceof NetworkFailure || staleLink(e) || (e instanceof TransferStatus && (e.status >= 500 || e.status === 408 || e.status === 429));

async function downloadFile({ path, meta }: Job, c: FileContext): Promise<void> {
  const { cache, commit, signal, emit } = c;
  const { etag, size } = meta;
  const lock = await lockBlob(cache.lockFile(etag), (holder) => emit({ type: 'waiting', path, holder }), signal);
  try {
    // Another process (or another path with the same bytes) finished it while we waited.
    if (existsSync(cache.blob(etag))) {
      cache.link(commit, path, etag);
      emit({ type: 'file-done', path, size, seconds: 0 });
      return;
    }
    const incomplete = cache.incomplete(etag);
    const retries = c.opts.retries ?? 5;
    const started = Date.now();
    let location = meta.location;
    let freshLink = false;
    let checksum: Checksum | undefined;
    let hashed = -1;
    let attempt = 0;
    // Longer than the file: not a part of it.
    if (cache.partialSize(etag) > size) truncateSync(incomplete, 0);
    emit({ type: 'file-start', path, size, resumeFrom: cache.partialSize(etag) });
    for (;;) {
      const offset = cache.partialSize(etag);
      if (!checksum || hashed !== offset) {
        checksum = checksumFor(etag, size);
        if (checksum) await hashPrefix(incomplete, offset, checksum.hash, signal);
        hashed = offset;
      }
      if (offset >= size) break;
      const out = await open(incomplete, offset > 0 ? 'a' : 'w');
      let fileBytes = offset;
      try {
        if (freshLink) {
          location = (await fileMetadata({ settings: c.s, repo: c.repo, revision: commit, path, url: resolveUrl(c.s, c.repo, commit, path) }, signal)).location;
          freshLink = false;
        }
        await transfer({
          settings: c.s, url: location, offset, size, out, signal, stallMs: c.opts.stallMs ?? 60_000,
          onChunk: (chunk) => {
            checksum?.hash.update(chunk);
            hashed += chunk.length;
            fileBytes += chunk.length;
            lock.touch();
            c.count(path, fileBytes, size, chunk.length, true);
          },
        });
        await out.sync();
        if (fileBytes < size) throw new NetworkFailure(location, new Error(`the connection closed at byte ${fileBytes} of ${size}`));
        break;
      } catch (e) {
        if (signal.aborted) throw e;
        if ((e as NodeJS.ErrnoException).code === 'ENOSPC') {
          throw new HubError(`the disk holding ${cache.blobsDir} is full while writing ${path} (${fileBytes} of ${size} bytes kept in ${incomplete}): free some space and run again, or set HF_HUB_CACHE to a larger disk`);
        }
        if (e instanceof RangeRefused) {
          // The bytes already counted will come again.
          c.count(path, 0, size, -offset, false);
          truncateSync(incomplete, 0);
          checksum = undefined;
          if (attempt++ >= retries) throw new HubError(`${path}: ${e.message}, again after ${retries} new starts`);
          continue;
        }
        if (e instanceof HubError) { try { unlinkSync(incomplete); } catch { /* none */ } throw e; }
        if (!retryable(e) || attempt >= retries) {
          if (e instanceof TransferStatus) throw new HubError(httpErrorMessage(e.status, e.headers, { settings: c.s, repo: c.repo, revision: commit, path, url: e.url }), e.status);
          if (e instanceof NetworkFailure) {
            const kept = cache.partialSize(etag);
            throw new HubError(`the download of ${path} from ${new URL(e.url).host} broke off (${(e.cause as Error | undefined)?.message ?? 'no answer'})` +
              `${attempt ? ` ${attempt + 1} times` : ''}; ${kept ? `the ${kept} bytes that arrived are kept in ${incomplete}: run again to resume from there` : 'run again'}`);
          }
          throw e;
        }
        attempt++;
        const reason = e instanceof NetworkFailure ? `${(e.cause as Error)?.message ?? 'the connection failed'}` : (e as Error).message;
        emit({ type: 'retry', path, attempt, of: retries, reason, resumeFrom: cache.partialSize(etag) });
        freshLink = staleLink(e);
        await sleep(Math.min(30_000, (c.opts.retryDelayMs ?? 1000) * 2 ** (attempt - 1)), undefined, { signal });
      } finally {
        await out.close();
      }
    }
    const digest = checksum?.hash.digest('hex');
    if (checksum && digest !== checksum.expected) {
      unlinkSync(incomplete);
      throw new HubError(`${path} of ${c.repo} arrived corrupted: its ${checksum.kind} is ${digest}, the Hub's is ${checksum.expected}; ` +
        'the file was deleted, not kept: run again to download it afresh (if it happens again, a proxy or disk is altering data)');
    }
    renameSync(incomplete, cache.blob(etag));
    cache.link(commit, path, etag);
    emit({ type: 'file-done', path, size, seconds: (Date.now() - started) / 1000 });
  } finally {
    lock.release();
  }
}
