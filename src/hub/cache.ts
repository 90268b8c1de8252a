// The Hugging Face cache layout, shared with huggingface_hub (huggingface-cli, diffusers, transformers):
//   <cache>/models--org--name/blobs/<etag>                 the files' bytes, named by the Hub's ETag
//   <cache>/models--org--name/blobs/<etag>.incomplete      a download in progress (resumed from its size)
//   <cache>/models--org--name/refs/<revision>              the commit a branch or tag pointed to
//   <cache>/models--org--name/snapshots/<commit>/<path>    relative symlink to ../../blobs/<etag>
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, symlinkSync, unlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { getRepoFolderName } from '@huggingface/hub';
import { writeFileAtomic } from '../util/atomic.js';

export const COMMIT_RE = /^[0-9a-f]{40}$/;

export class RepoCache {
  readonly dir: string;

  constructor(readonly cacheDir: string, readonly repo: string) {
    this.dir = join(cacheDir, getRepoFolderName({ type: 'model', name: repo }));
  }

  get blobsDir(): string { return join(this.dir, 'blobs'); }
  blob(etag: string): string { return join(this.blobsDir, etag); }
  incomplete(etag: string): string { return `${this.blob(etag)}.incomplete`; }
  snapshotDir(commit: string): string { return join(this.dir, 'snapshots', commit); }
  snapshotFile(commit: string, path: string): string { return join(this.snapshotDir(commit), ...path.split('/')); }
  refFile(revision: string): string { return join(this.dir, 'refs', ...revision.split('/')); }
  /** huggingface_hub keeps its lock files here; graft's sit beside them under their own names. */
  lockFile(etag: string): string { return join(this.cacheDir, '.locks', getRepoFolderName({ type: 'model', name: this.repo }), `${etag}.graft.lock`); }

  /** The commit a revision means here: itself when it is a commit hash, else what refs/<revision> says. */
  commitOf(revision: string): string | undefined {
    if (COMMIT_RE.test(revision)) return revision;
    const ref = this.refFile(revision);
    if (!existsSync(ref)) return undefined;
    const commit = readFileSync(ref, 'utf8').trim();
    return COMMIT_RE.test(commit) ? commit : undefined;
  }

  writeRef(revision: string, commit: string): void {
    if (revision === commit) return;
    const ref = this.refFile(revision);
    if (existsSync(ref) && readFileSync(ref, 'utf8').trim() === commit) return;
    writeFileAtomic(ref, commit);
  }

  /** Whether the snapshot has this file with its bytes present (a link whose blob is gone does not count). */
  has(commit: string, path: string): boolean {
    try {
      return statSync(this.snapshotFile(commit, path)).isFile();
    } catch {
      return false;
    }
  }

  /** Points snapshots/<commit>/<path> at the blob by a relative link, replacing what was there in one rename. */
  link(commit: string, path: string, etag: string): void {
    const file = this.snapshotFile(commit, path);
    mkdirSync(dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.link`;
    try { unlinkSync(tmp); } catch { /* none left over */ }
    symlinkSync(relative(dirname(file), this.blob(etag)), tmp);
    renameSync(tmp, file);
  }

  /** Every file of a snapshot, as repo paths ("transformer/config.json"). */
  snapshotFiles(commit: string): string[] {
    const root = this.snapshotDir(commit);
    const out: string[] = [];
    const walk = (dir: string, prefix: string) => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const rel = prefix ? `${prefix}/${e.name}` : e.name;
        if (e.isDirectory()) walk(join(dir, e.name), rel);
        else if (this.has(commit, rel)) out.push(rel);
      }
    };
    if (existsSync(root)) walk(root, '');
    return out.sort();
  }

  /**
   * Removes partial files whose blob is complete (another tool, or another graft process, finished the
   * file): left there, each would hold as many bytes as it had reached. One a graft process still holds the
   * lock of stays.
   */
  dropFinishedPartials(): void {
    if (!existsSync(this.blobsDir)) return;
    for (const name of readdirSync(this.blobsDir)) {
      const etag = name.endsWith('.incomplete') ? name.slice(0, -'.incomplete'.length) : undefined;
      if (!etag || !existsSync(this.blob(etag)) || existsSync(this.lockFile(etag))) continue;
      try { unlinkSync(this.incomplete(etag)); } catch { /* gone already */ }
    }
  }

  /** Bytes of a partial download already on disk. */
  partialSize(etag: string): number {
    try {
      return lstatSync(this.incomplete(etag)).size;
    } catch {
      return 0;
    }
  }
}
