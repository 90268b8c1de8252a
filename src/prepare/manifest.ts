// What preparation already knows about each source file (content hash, displayed size), keyed by path, size
// and modification time, so a second run neither re-reads nor re-hashes files that did not change.
import { readFileSync } from 'node:fs';
import { writeFileAtomic } from '../util/atomic.js';

export interface SourceInfo {
  size: number;
  mtimeMs: number;
  sha256: string;
  width: number;
  height: number;
}

const FORMAT = 'graft-prepare-manifest/1';

export class Manifest {
  private readonly next = new Map<string, SourceInfo>();

  private constructor(private readonly file: string, private readonly known: Map<string, SourceInfo>) {}

  /** A missing or damaged manifest only costs re-hashing: it is never an error. */
  static load(file: string): Manifest {
    try {
      const json = JSON.parse(readFileSync(file, 'utf8')) as { format?: string; files?: Record<string, SourceInfo> };
      if (json.format === FORMAT && json.files) return new Manifest(file, new Map(Object.entries(json.files)));
    } catch { /* start afresh */ }
    return new Manifest(file, new Map());
  }

  /** The recorded facts about path, when its size and mtime are still the same. */
  lookup(path: string, size: number, mtimeMs: number): SourceInfo | undefined {
    const k = this.known.get(path);
    return k && k.size === size && k.mtimeMs === mtimeMs ? k : undefined;
  }

  /** Keep this entry in the manifest written next (files no dataset has any more are dropped). */
  record(path: string, info: SourceInfo): void {
    this.next.set(path, info);
  }

  save(): void {
    const files = Object.fromEntries([...this.next.entries()].sort(([a], [b]) => a.localeCompare(b)));
    writeFileAtomic(this.file, `${JSON.stringify({ format: FORMAT, files })}\n`);
  }
}
