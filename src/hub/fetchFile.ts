// One file's bytes into blobs/: under its lock, continuing a partial file with Range, reconnecting when the
// connection drops or stalls, hashing as the bytes arrive, and renaming into place only when the checksum
// matches.
import { existsSync, renameSync, truncateSync, unlinkSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RepoCache } from './cache.js';
import { checksumFor, hashPrefix, type Checksum } from './checksum.js';
import { HubError, httpErrorMessage, networkReason } from './errors.js';
import { fileMetadata, NetworkFailure, RangeRefused, resolveUrl, TooManyBytes, transfer, TransferStatus, type FileMeta } from './http.js';
import { lockBlob } from './lock.js';
import type { HubEvent } from './progress.js';
import type { HubSettings } from './settings.js';

export interface Job {
  path: string;
  meta: FileMeta;
}

export interface FileContext {
  s: HubSettings;
  cache: RepoCache;
  repo: string;
  commit: string;
  opts: { retries?: number; retryDelayMs?: number; stallMs?: number };
  signal: AbortSignal;
  emit: (e: HubEvent) => void;
  count: (path: string, fileBytes: number, fileSize: number, delta: number, fresh: boolean) => void;
}

/** A CDN link that stopped working (expired signature): a new HEAD gives a fresh one. */
const staleLink = (e: unknown) => e instanceof TransferStatus && [401, 403, 404, 410].includes(e.status);
const retryable = (e: unknown) => e instanceof NetworkFailure || staleLink(e) || (e instanceof TransferStatus && (e.status >= 500 || e.status === 408 || e.status === 429));

export async function fetchFile({ path, meta }: Job, c: FileContext): Promise<void> {
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
        if (e instanceof TooManyBytes) { try { unlinkSync(incomplete); } catch { /* none */ } throw e; }
        if (e instanceof HubError) throw e;
        if (!retryable(e) || attempt >= retries) {
          if (e instanceof TransferStatus) throw new HubError(httpErrorMessage(e.status, e.headers, { settings: c.s, repo: c.repo, revision: commit, path, url: e.url }), e.status);
          if (e instanceof NetworkFailure) {
            const kept = cache.partialSize(etag);
            throw new HubError(`the download of ${path} from ${new URL(e.url).host} broke off (${networkReason(e.cause)})` +
              `${attempt ? ` ${attempt + 1} times` : ''}; ${kept ? `the ${kept} bytes that arrived are kept in ${incomplete}: run again to resume from there` : 'run again'}`);
          }
          throw e;
        }
        attempt++;
        const reason = e instanceof NetworkFailure ? networkReason(e.cause) : (e as Error).message;
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
