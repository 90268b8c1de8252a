// What a downloaded file is checked against. The Hub's ETag for a file is its content's id: for a Git LFS (or
// Xet) file the sha256 of its bytes (64 hex digits), for a plain git file the git blob id, sha1 of
// "blob <size>\0" + bytes (40 hex digits). The hash runs as the bytes arrive; a resumed download first
// feeds it the part already on disk.
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';

export interface Checksum {
  kind: 'sha256' | 'git-sha1';
  expected: string;
  hash: Hash;
}

/** The check an ETag allows, or undefined for an ETag of another form (then only the size is checked). */
export function checksumFor(etag: string, size: number): Checksum | undefined {
  if (/^[0-9a-f]{64}$/.test(etag)) return { kind: 'sha256', expected: etag, hash: createHash('sha256') };
  if (/^[0-9a-f]{40}$/.test(etag)) {
    const hash = createHash('sha1');
    hash.update(`blob ${size}\0`);
    return { kind: 'git-sha1', expected: etag, hash };
  }
  return undefined;
}

/** Feeds the first `bytes` of a partial file to the hash (a resumed download continues after them). */
export async function hashPrefix(file: string, bytes: number, hash: Hash, signal?: AbortSignal): Promise<void> {
  if (bytes === 0) return;
  for await (const chunk of createReadStream(file, { start: 0, end: bytes - 1, highWaterMark: 4 << 20, signal })) {
    hash.update(chunk as Buffer);
  }
}

/** The ETag header as a blob name: without the quotes and the weak marker. */
export function normalizeEtag(etag: string | null): string | undefined {
  if (!etag) return undefined;
  return etag.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1') || undefined;
}
