// HF_HUB_OFFLINE=1: the files come from the cache alone. refs/<revision> gives the commit, its snapshot the
// files; a family's files are chosen among those present, and the shards each index names must be there too
// (an interrupted download leaves an index without all its shards).
import { existsSync, readFileSync } from 'node:fs';
import type { RepoCache } from './cache.js';
import type { EnsureResult } from './download.js';
import { HubError } from './errors.js';
import type { ProgressCallback } from './progress.js';
import { indexShards, selectFiles, type FileChoice } from './select.js';

/** The snapshot the cache holds for a revision, when it has every chosen file (and every shard its indexes name). */
export function cachedSnapshot(cache: RepoCache, revision: string, choice: FileChoice): { commit: string; files: string[]; missing: string[] } | undefined {
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

export function offline(cache: RepoCache, repo: string, revision: string, choice: FileChoice, emit: ProgressCallback): EnsureResult {
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

