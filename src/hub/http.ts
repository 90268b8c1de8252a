// The two requests @huggingface/hub does not make the way a resumable, checked download needs them, written
// on fetch: the HEAD of /{repo}/resolve/{commit}/{path} read without following the redirect to the CDN (the
// library's fileDownloadInfo follows it, and so loses X-Repo-Commit and the CDN address), and the GET of the
// file's bytes from a given offset with a Range header (the library's downloadFile has no resume).
import type { FileHandle } from 'node:fs/promises';
import { normalizeEtag } from './checksum.js';
import { HubError, httpErrorMessage, type RequestContext } from './errors.js';
import type { HubSettings } from './settings.js';

/** The network failed under a request (no HTTP answer): the caller says so with the URL and a hint. */
export class NetworkFailure extends Error {
  constructor(readonly url: string, readonly cause: unknown) {
    super(`cannot reach ${url}`);
  }
}

export function resolveUrl(s: HubSettings, repo: string, revision: string, path: string): string {
  return `${s.endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${path.split('/').map(encodeURIComponent).join('/')}`;
}

/** Hosts that are the Hub: the endpoint's, and huggingface.co's names (a redirect between them stays on the Hub). */
function isHubHost(s: HubSettings, url: string): boolean {
  const host = new URL(url).hostname.toLowerCase();
  return host === new URL(s.endpoint).hostname.toLowerCase() || ['huggingface.co', 'hf.co'].includes(host);
}

/** The token goes to the Hub only, never to the CDN a file redirects to (its address is signed). */
export function requestHeaders(s: HubSettings, url: string, extra: Record<string, string> = {}): Record<string, string> {
  const h: Record<string, string> = { 'user-agent': 'graft (huggingface_hub-compatible cache)', ...extra };
  if (s.token && isHubHost(s, url)) h.authorization = `Bearer ${s.token.value}`;
  return h;
}

async function send(url: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(url, init);
  } catch (e) {
    if ((e as Error).name === 'AbortError' || init.signal?.aborted) throw e;
    throw new NetworkFailure(url, e);
  }
}

export interface FileMeta {
  /** The blob name: the content's sha256 (LFS, Xet) or git blob id. */
  etag: string;
  size: number;
  commit: string;
  /** Where the bytes are: the CDN address the Hub redirects to, or the resolve URL itself. */
  location: string;
}

/**
 * What the Hub says of one file at a commit, as huggingface_hub reads it: X-Linked-Etag / X-Linked-Size for a
 * file stored in LFS (else ETag / Content-Length), X-Repo-Commit, and the Location of a redirect. Redirects
 * that stay on the Hub (a renamed repo) are followed; the one to the CDN is not: its answer carries the
 * file's headers, and the CDN address is where the bytes are.
 */
export async function fileMetadata(c: RequestContext & { path: string }, signal?: AbortSignal): Promise<FileMeta> {
  let url = c.url;
  for (let hop = 0; hop < 5; hop++) {
    // identity: the size must be the file's, not that of a compressed answer.
    const res = await send(url, { method: 'HEAD', redirect: 'manual', signal, headers: requestHeaders(c.settings, url, { 'accept-encoding': 'identity' }) });
    const location = res.headers.get('location');
    const isRedirect = res.status >= 300 && res.status < 400 && location !== null;
    const target = isRedirect ? new URL(location, url).href : url;
    if (isRedirect && (new URL(target).hostname === new URL(url).hostname || isHubHost(c.settings, target))) {
      url = target;
      continue;
    }
    if (!isRedirect && !res.ok) throw new HubError(httpErrorMessage(res.status, res.headers, { ...c, url }), res.status);
    const etag = normalizeEtag(res.headers.get('x-linked-etag') ?? res.headers.get('etag'));
    const size = Number(res.headers.get('x-linked-size') ?? (isRedirect ? NaN : res.headers.get('content-length') ?? NaN));
    const commit = res.headers.get('x-repo-commit');
    // Every Hub answer names its commit; one without is from something else (a proxy's page, a wrong HF_ENDPOINT).
    const lacking = !commit ? 'X-Repo-Commit' : !etag ? 'ETag' : !Number.isFinite(size) ? 'size (X-Linked-Size or Content-Length)' : undefined;
    if (lacking) {
      throw new HubError(`the answer for ${c.path} of ${c.repo} (${url}) has no ${lacking} header, so it does not come from a Hugging Face Hub: check HF_ENDPOINT (${c.settings.endpoint}) and any proxy`);
    }
    return { etag: etag!, size, commit: commit!, location: target };
  }
  throw new HubError(`too many redirects for ${c.path} of ${c.repo} (${c.url})`);
}

/** More bytes came than the Hub announced: not the file (the partial file is worthless). */
export class TooManyBytes extends HubError {}

/** The server sent something else than the rest of the file from the offset asked for: start it over. */
export class RangeRefused extends Error {}

/** An HTTP error status from where the bytes are: worth retrying (5xx, 429), or after a new HEAD (403 of a CDN link that expired). */
export class TransferStatus extends Error {
  constructor(readonly status: number, readonly url: string, readonly headers: Headers) {
    super(`HTTP ${status} from ${new URL(url).host}`);
  }
}

export interface TransferOptions {
  settings: HubSettings;
  url: string;
  /** Bytes already in the file: the request asks for the rest. */
  offset: number;
  size: number;
  out: FileHandle;
  onChunk: (chunk: Buffer) => void;
  signal?: AbortSignal;
  /** No byte for this long means a dead connection (the socket may never say so). */
  stallMs: number;
}

// Bytes are written in batches: a write per network chunk (64 kB) is a system call each, and system calls
// are dear on sandboxed machines (a 1 GiB download over loopback here: 53 MB/s written per chunk, 62 batched).
const WRITE_BATCH = 8 << 20;

/**
 * Appends the file's bytes from `offset` to `out`; returns the bytes written. onChunk sees every chunk as it
 * arrives; what arrived before a failure is on disk when this throws.
 */
export async function transfer(o: TransferOptions): Promise<number> {
  const stall = new AbortController();
  let timer = setTimeout(() => stall.abort(), o.stallMs);
  const signal = o.signal ? AbortSignal.any([o.signal, stall.signal]) : stall.signal;
  const headers = requestHeaders(o.settings, o.url, o.offset > 0 ? { range: `bytes=${o.offset}-` } : {});
  let written = 0;
  let batch: Buffer[] = [];
  let batchBytes = 0;
  const flush = async () => {
    if (batchBytes === 0) return;
    const data = batch.length === 1 ? batch[0]! : Buffer.concat(batch, batchBytes);
    batch = [];
    batchBytes = 0;
    await o.out.write(data);
  };
  try {
    const res = await send(o.url, { headers, signal, redirect: 'follow' });
    if (o.offset > 0 && res.status === 416) throw new RangeRefused(`the server refused bytes from ${o.offset} (HTTP 416)`);
    if (!res.ok) throw new TransferStatus(res.status, o.url, res.headers);
    if (o.offset > 0) {
      const start = /^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '')?.[1];
      if (res.status !== 206 || Number(start) !== o.offset) throw new RangeRefused(`the server did not resume at byte ${o.offset} (HTTP ${res.status})`);
    }
    if (!res.body) throw new TransferStatus(res.status, o.url, res.headers);
    for await (const part of res.body) {
      clearTimeout(timer);
      timer = setTimeout(() => stall.abort(), o.stallMs);
      const chunk = Buffer.from(part.buffer, part.byteOffset, part.byteLength);
      if (o.offset + written + chunk.length > o.size) {
        throw new TooManyBytes(`the server sent more than the ${o.size} bytes the Hub announced (${o.url}): the partial file was deleted; run again`);
      }
      batch.push(chunk);
      batchBytes += chunk.length;
      written += chunk.length;
      o.onChunk(chunk);
      if (batchBytes >= WRITE_BATCH) await flush();
    }
    await flush();
    return written;
  } catch (e) {
    // What arrived is good (the checksum will tell): kept for the resume. Not after too many bytes.
    if (!(e instanceof HubError)) await flush().catch(() => {});
    if (stall.signal.aborted && !o.signal?.aborted) throw new NetworkFailure(o.url, new Error(`no data for ${Math.round(o.stallMs / 1000)} s`));
    if (e instanceof HubError || e instanceof RangeRefused || e instanceof TransferStatus || e instanceof NetworkFailure) throw e;
    if ((e as Error).name === 'AbortError') throw e;
    // The body's stream broke (the connection dropped half-way).
    throw new NetworkFailure(o.url, e);
  } finally {
    clearTimeout(timer);
  }
}
