// ensureModelFiles: the files a job needs from a Hub repo, in the shared Hugging Face cache, downloading
// only what is missing. Each file is checked against the Hub's checksum before it becomes a blob; a
// partial download stays as blobs/<etag>.incomplete and the next attempt (or run) continues it.
import { existsSync, mkdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { revisionInfo } from './api.js';
import { RepoCache } from './cache.js';
import { checkFreeSpace, freeBytes, type FreeSpaceProbe } from './disk.js';
import { HubError, networkErrorMessage } from './errors.js';
import { fetchFile, type Job } from './fetchFile.js';
import { fileMetadata, NetworkFailure, resolveUrl, type FileMeta } from './http.js';
import { cachedSnapshot, offline } from './offline.js';
import { ProgressTracker, type PlannedFile, type ProgressCallback } from './progress.js';
import { parseRepoRef } from './repoId.js';
import { familyFiles, knownFamilies, selectFiles, type FileChoice } from './select.js';
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
  const choice: FileChoice = { family: opts.family, tokenizersOnly: opts.tokenizersOnly, parts: opts.parts, include: opts.include, files: opts.files };
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
      await runLimited(jobs, opts.concurrency ?? 4, stop, (job) => fetchFile(job, { s, cache, repo, commit, opts, signal, emit, count }));
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

