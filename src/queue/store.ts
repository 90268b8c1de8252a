// The queue database (SQLite, WAL) in the graft home: jobs (drafts and the queue), named datasets, and
// which daemon owns the queue. The daemon is the only writer of run states (src/queue/queue.ts); the TUI
// and CLI read rows directly and ask the daemon for changes over its socket.
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';

export const JOB_STATES = ['draft', 'queued', 'running', 'stopping', 'stopped', 'finished', 'failed'] as const;
export type JobState = (typeof JOB_STATES)[number];

export interface JobRow {
  id: number;
  name: string;
  config_path: string;
  state: JobState;
  gpu: number;
  position: number;
  created_at: string;
  updated_at: string;
  /** The job folder (holds job.json, metrics.jsonl, log.txt, checkpoints); NULL for drafts made before migration 2. */
  job_dir: string | null;
  /** The stage that runs or ran last: 'prepare' (config.yaml -> job.json) or 'train'. */
  stage: string | null;
  /** The trainer's process id and start time (clock ticks since boot, /proc/<pid>/stat) while it runs. */
  pid: number | null;
  pid_start: number | null;
  exit_code: number | null;
  /** The last error line of a failed run, or why a run ended the way it did. */
  last_error: string | null;
  /** 'graceful' or 'force' once the user asked a running job to stop. */
  stop_requested: string | null;
  started_at: string | null;
  ended_at: string | null;
  /** How many times a trainer was launched for this job. */
  runs: number;
}

export interface DatasetRow {
  name: string;
  folder: string;
  is_reg: boolean;
  created_at: string;
  updated_at: string;
}

// Each entry migrates the schema from version i to i + 1 (PRAGMA user_version). Append, never edit.
const MIGRATIONS = [
  `CREATE TABLE jobs (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     name TEXT NOT NULL,
     config_path TEXT NOT NULL UNIQUE,
     state TEXT NOT NULL DEFAULT 'draft' CHECK (state IN (${JOB_STATES.map((s) => `'${s}'`).join(', ')})),
     gpu INTEGER NOT NULL DEFAULT 0,
     position INTEGER NOT NULL DEFAULT 0,
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL
   );
   CREATE INDEX jobs_gpu_position ON jobs (gpu, position);
   CREATE TABLE datasets (
     name TEXT PRIMARY KEY,
     folder TEXT NOT NULL,
     is_reg INTEGER NOT NULL DEFAULT 0,
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL
   );`,
  `ALTER TABLE jobs ADD COLUMN job_dir TEXT;
   ALTER TABLE jobs ADD COLUMN stage TEXT;
   ALTER TABLE jobs ADD COLUMN pid INTEGER;
   ALTER TABLE jobs ADD COLUMN pid_start INTEGER;
   ALTER TABLE jobs ADD COLUMN exit_code INTEGER;
   ALTER TABLE jobs ADD COLUMN last_error TEXT;
   ALTER TABLE jobs ADD COLUMN stop_requested TEXT;
   ALTER TABLE jobs ADD COLUMN started_at TEXT;
   ALTER TABLE jobs ADD COLUMN ended_at TEXT;
   ALTER TABLE jobs ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;
   UPDATE jobs SET job_dir = rtrim(rtrim(config_path, replace(config_path, '/', '')), '/');
   CREATE TABLE daemon (
     id INTEGER PRIMARY KEY CHECK (id = 1),
     pid INTEGER NOT NULL,
     pid_start INTEGER,
     socket TEXT NOT NULL,
     started_at TEXT NOT NULL
   );`,
];

export class StoreError extends Error {}

export class Store {
  readonly db: Database.Database;

  constructor(readonly home: string) {
    mkdirSync(home, { recursive: true, mode: 0o700 });
    this.db = new Database(join(home, 'graft.db'));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('foreign_keys = ON');
    this.migrate();
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  close(): void {
    this.db.close();
  }

  job(id: number): JobRow | undefined {
    return this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
  }

  listJobs(): JobRow[] {
    return this.db.prepare('SELECT * FROM jobs ORDER BY gpu, position, id').all() as JobRow[];
  }

  jobByConfigPath(configPath: string): JobRow | undefined {
    return this.db.prepare('SELECT * FROM jobs WHERE config_path = ?').get(configPath) as JobRow | undefined;
  }

  /** Register (or update) the draft whose config lives at configPath. Refuses to touch a job that left the draft state. */
  saveDraft(name: string, configPath: string, gpu: number): JobRow {
    const now = new Date().toISOString();
    return this.db.transaction(() => {
      const existing = this.jobByConfigPath(configPath);
      if (existing) {
        if (existing.state !== 'draft') {
          throw new StoreError(`job "${existing.name}" (${configPath}) is ${existing.state}; saving would change a job that already left the draft state. Save under another name.`);
        }
        this.db.prepare('UPDATE jobs SET name = ?, gpu = ?, updated_at = ? WHERE id = ?').run(name, gpu, now, existing.id);
        return this.jobByConfigPath(configPath)!;
      }
      const { next } = this.db.prepare('SELECT COALESCE(MAX(position), -1) + 1 AS next FROM jobs WHERE gpu = ?').get(gpu) as { next: number };
      this.db.prepare('INSERT INTO jobs (name, config_path, job_dir, state, gpu, position, created_at, updated_at) VALUES (?, ?, ?, \'draft\', ?, ?, ?, ?)')
        .run(name, configPath, dirname(configPath), gpu, next, now, now);
      return this.jobByConfigPath(configPath)!;
    })();
  }

  listDatasets(): DatasetRow[] {
    const rows = this.db.prepare('SELECT * FROM datasets ORDER BY name').all() as (Omit<DatasetRow, 'is_reg'> & { is_reg: number })[];
    return rows.map((r) => ({ ...r, is_reg: r.is_reg === 1 }));
  }

  addDataset(name: string, folder: string, isReg = false): void {
    const trimmed = name.trim();
    if (!/^[A-Za-z0-9][A-Za-z0-9 ._-]*$/.test(trimmed)) {
      throw new StoreError(`dataset name ${JSON.stringify(name)}: use letters, digits, space, . _ - (starting with a letter or digit)`);
    }
    const now = new Date().toISOString();
    try {
      this.db.prepare('INSERT INTO datasets (name, folder, is_reg, created_at, updated_at) VALUES (?, ?, ?, ?, ?)').run(trimmed, folder, isReg ? 1 : 0, now, now);
    } catch (err) {
      if (String((err as Error).message).includes('UNIQUE')) throw new StoreError(`a dataset named "${trimmed}" already exists`);
      throw err;
    }
  }

  setDatasetReg(name: string, isReg: boolean): void {
    this.db.prepare('UPDATE datasets SET is_reg = ?, updated_at = ? WHERE name = ?').run(isReg ? 1 : 0, new Date().toISOString(), name);
  }

  /** Forget a dataset's name; the folder on disk is never touched. */
  removeDataset(name: string): void {
    this.db.prepare('DELETE FROM datasets WHERE name = ?').run(name);
  }
}
