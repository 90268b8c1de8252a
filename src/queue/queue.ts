// The queue's rules: which job may move to which state, order within each GPU's queue, and what a job
// folder must hold to be queued (a config.yaml, prepared when it runs, or a prepared job.json). The daemon
// applies these (it is the only writer of run states); the same functions are unit-tested without a daemon.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { parseJobYaml, procPath, type JobDoc } from '../config/document.js';
import { checkJob, refusal } from '../config/check.js';
import { adoptConfig, jobDirForConfig } from '../prepare/jobdir.js';
import { configuredSteps, trainedStep, writeTrainSteps } from './extend.js';
import { loadPresets } from '../presets.js';
import { getAt } from '../util/objpath.js';
import type { JobRow, JobState, Store } from './store.js';

export class QueueError extends Error {}

export interface ResolvedJob {
  jobDir: string;
  /** The config.yaml given (or the folder's), else job.json: the row's unique key. */
  configPath: string;
  name: string;
  /** GPU index from the device (cuda:N), when it names one. */
  gpu?: number;
}

const gpuOf = (device: unknown): number | undefined => {
  const m = typeof device === 'string' ? /^cuda:(\d+)$/.exec(device) : null;
  return m ? Number(m[1]) : undefined;
};

/**
 * A config that is to be prepared: it must be valid, ask only for what graft's trainer does, and name dataset
 * folders that hold pictures, now rather than in a failed prepare stage.
 */
function readConfig(file: string): JobDoc {
  let doc: JobDoc;
  try {
    doc = parseJobYaml(readFileSync(file, 'utf8'), file);
  } catch (err) {
    throw new QueueError((err as Error).message);
  }
  const why = refusal(file, checkJob(doc, loadPresets(), { configDir: dirname(file) }));
  if (why) throw new QueueError(why);
  return doc;
}

/**
 * What `queue add` / `run` accept: a job folder (with config.yaml, prepared when it runs, or a prepared
 * job.json), a job.json, or a config.yaml anywhere (its job folder is <training_folder>/<name>).
 */
export function resolveJob(target: string, home: string): ResolvedJob {
  const full = resolve(target);
  if (!existsSync(full)) throw new QueueError(`no such file or folder: ${full}`);
  let jobDir: string;
  let config: string | undefined;
  if (statSync(full).isDirectory()) {
    jobDir = full;
    if (existsSync(join(full, 'config.yaml'))) config = join(full, 'config.yaml');
  } else if (basename(full) === 'job.json') {
    jobDir = dirname(full);
  } else if (/\.ya?ml$/i.test(full)) {
    config = full;
    jobDir = '';
  } else {
    throw new QueueError(`${full}: expected a job folder (with config.yaml or job.json) or a config.yaml`);
  }
  if (config) {
    const doc = readConfig(config);
    if (jobDir === '') jobDir = jobDirForConfig(config, doc, home);
    return { jobDir, configPath: config, name: String(getAt(doc, ['config', 'name'])), gpu: gpuOf(getAt(doc, procPath('device'))) };
  }
  const jobJson = join(jobDir, 'job.json');
  if (!existsSync(jobJson)) throw new QueueError(`${jobDir} has neither config.yaml nor job.json: not a job folder`);
  let job: { name?: unknown; device?: unknown };
  try {
    job = JSON.parse(readFileSync(jobJson, 'utf8')) as typeof job;
  } catch (err) {
    throw new QueueError(`${jobJson} is not valid JSON: ${(err as Error).message}`);
  }
  const name = typeof job.name === 'string' && job.name !== '' ? job.name : basename(jobDir);
  return { jobDir, configPath: jobJson, name, gpu: gpuOf(job.device) };
}

/** A config kept outside its job folder is copied in, where the prepare stage reads it. */
function adoptInto(r: ResolvedJob): void {
  if (!/\.ya?ml$/i.test(r.configPath) || r.configPath === join(r.jobDir, 'config.yaml')) return;
  try {
    mkdirSync(r.jobDir, { recursive: true });
    adoptConfig(r.configPath, readConfig(r.configPath), r.jobDir);
  } catch (err) {
    throw err instanceof QueueError ? err : new QueueError((err as Error).message);
  }
}

export const ACTIVE: JobState[] = ['running', 'stopping'];
const now = () => new Date().toISOString();

/** Where a job runs, as the screens show it: its GPU, or "cpu" on a machine without GPUs (one CPU slot). */
export function slotLabel(gpu: number, cpuOnly: boolean): string {
  return cpuOnly ? 'cpu' : `gpu ${gpu}`;
}

/** The job folder of a row (rows from before migration 2 carry only config_path). */
export function jobDirOf(job: JobRow): string {
  return job.job_dir ?? dirname(job.config_path);
}

export class Queue {
  constructor(readonly store: Store) {}

  private get db() { return this.store.db; }

  get(id: number): JobRow {
    const job = this.store.job(id);
    if (!job) throw new QueueError(`no job ${id}`);
    return job;
  }

  private endPosition(gpu: number): number {
    return (this.db.prepare('SELECT COALESCE(MAX(position), -1) + 1 AS p FROM jobs WHERE gpu = ?').get(gpu) as { p: number }).p;
  }

  private frontPosition(gpu: number): number {
    return (this.db.prepare("SELECT COALESCE(MIN(position), 1) - 1 AS p FROM jobs WHERE gpu = ? AND state = 'queued'").get(gpu) as { p: number }).p;
  }

  /** Queue a job folder (or put its draft / stopped / failed row back in the queue, at the end). */
  add(r: ResolvedJob, gpu?: number): JobRow {
    adoptInto(r);
    return this.db.transaction(() => {
      const existing = (this.db.prepare('SELECT * FROM jobs WHERE job_dir = ? OR config_path = ?').get(r.jobDir, r.configPath)) as JobRow | undefined;
      const g = gpu ?? existing?.gpu ?? r.gpu ?? 0;
      if (existing) {
        if (existing.state === 'queued' || ACTIVE.includes(existing.state)) throw new QueueError(`job ${existing.id} (${existing.name}) is already ${existing.state}`);
        if (existing.state === 'finished') throw new QueueError(`job ${existing.id} (${existing.name}) has finished: nothing left to train. Train it further with graft queue extend ${existing.id} --steps N, or delete it with its outputs (graft queue rm ${existing.id} --outputs) to train it again.`);
        this.db.prepare("UPDATE jobs SET state = 'queued', name = ?, config_path = ?, job_dir = ?, gpu = ?, position = ?, stop_requested = NULL, updated_at = ? WHERE id = ?")
          .run(r.name, r.configPath, r.jobDir, g, this.endPosition(g), now(), existing.id);
        return this.get(existing.id);
      }
      const t = now();
      const info = this.db.prepare("INSERT INTO jobs (name, config_path, job_dir, state, gpu, position, created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)")
        .run(r.name, r.configPath, r.jobDir, g, this.endPosition(g), t, t);
      return this.get(Number(info.lastInsertRowid));
    })();
  }

  /** The next queued job of a slot: GPU index, or every job when the machine has only the CPU slot. */
  next(gpu: number | 'cpu'): JobRow | undefined {
    const sql = gpu === 'cpu'
      ? "SELECT * FROM jobs WHERE state = 'queued' ORDER BY position, id LIMIT 1"
      : "SELECT * FROM jobs WHERE state = 'queued' AND gpu = ? ORDER BY position, id LIMIT 1";
    return (gpu === 'cpu' ? this.db.prepare(sql).get() : this.db.prepare(sql).get(gpu)) as JobRow | undefined;
  }

  active(): JobRow[] {
    return this.db.prepare("SELECT * FROM jobs WHERE state IN ('running', 'stopping') ORDER BY id").all() as JobRow[];
  }

  /** Claim a queued job for a run: it is 'running' (without a pid yet) before the trainer starts, so a crash in between can't start it twice. */
  claim(id: number, stage: string): boolean {
    const r = this.db.prepare("UPDATE jobs SET state = 'running', stage = ?, pid = NULL, pid_start = NULL, exit_code = NULL, last_error = NULL, stop_requested = NULL, started_at = ?, ended_at = NULL, runs = runs + 1, updated_at = ? WHERE id = ? AND state = 'queued'")
      .run(stage, now(), now(), id);
    return r.changes === 1;
  }

  setPid(id: number, pid: number, pidStart: number | null): void {
    this.db.prepare('UPDATE jobs SET pid = ?, pid_start = ?, updated_at = ? WHERE id = ?').run(pid, pidStart, now(), id);
  }

  setStage(id: number, stage: string): void {
    this.db.prepare('UPDATE jobs SET stage = ?, updated_at = ? WHERE id = ?').run(stage, now(), id);
  }

  /** A run ended: record the outcome; the pid is cleared so nothing mistakes a reused pid for it. */
  finish(id: number, state: 'finished' | 'stopped' | 'failed', exitCode: number | null, lastError: string | null): void {
    this.db.prepare('UPDATE jobs SET state = ?, exit_code = ?, last_error = ?, pid = NULL, pid_start = NULL, ended_at = ?, updated_at = ? WHERE id = ?')
      .run(state, exitCode, lastError, now(), now(), id);
  }

  /** Stop: a running job is asked to save and stop (the daemon signals it); a queued job leaves the queue. */
  requestStop(id: number, force: boolean): JobRow {
    const job = this.get(id);
    if (job.state === 'queued') {
      this.finish(id, 'stopped', null, 'taken out of the queue before it ran');
      return this.get(id);
    }
    if (!ACTIVE.includes(job.state)) throw new QueueError(`job ${id} (${job.name}) is ${job.state}, not running`);
    this.db.prepare("UPDATE jobs SET state = 'stopping', stop_requested = ?, updated_at = ? WHERE id = ?").run(force ? 'force' : 'graceful', now(), id);
    return this.get(id);
  }

  /**
   * Resume a stopped or failed job, or a finished one whose config now asks for more steps: first in its
   * GPU's queue; the trainer continues from state/.
   */
  resume(id: number): JobRow {
    const job = this.get(id);
    if (job.state === 'finished') {
      const trained = trainedStep(jobDirOf(job));
      const steps = configuredSteps(job.config_path);
      if (steps === undefined || steps <= trained) {
        throw new QueueError(`job ${id} (${job.name}) has finished at step ${trained}: raise its steps to train on (graft queue extend ${id} --steps ${trained * 2}, or Steps in New Job)`);
      }
    } else if (job.state !== 'stopped' && job.state !== 'failed') {
      throw new QueueError(`job ${id} (${job.name}) is ${job.state}; only a stopped, failed or extended job resumes`);
    }
    this.db.prepare("UPDATE jobs SET state = 'queued', position = ?, stop_requested = NULL, updated_at = ? WHERE id = ?").run(this.frontPosition(job.gpu), now(), id);
    return this.get(id);
  }

  /** Raise a job's train.steps in its config and queue it: it resumes from its last state and trains on. */
  extend(id: number, steps: number): { job: JobRow; kept: boolean; from: number } {
    const job = this.get(id);
    if (job.state !== 'finished' && job.state !== 'stopped' && job.state !== 'failed') {
      throw new QueueError(`job ${id} (${job.name}) is ${job.state}; only a finished, stopped or failed job can be extended`);
    }
    const from = trainedStep(jobDirOf(job));
    if (!Number.isInteger(steps) || steps <= from) throw new QueueError(`--steps ${steps}: job ${id} has trained ${from} steps; give more than that`);
    const { kept } = writeTrainSteps(job.config_path, steps);
    return { job: this.resume(id), kept, from };
  }

  /** Requeue a stopped or failed job at the end of its GPU's queue (it continues from its saved state). */
  requeue(id: number): JobRow {
    const job = this.get(id);
    if (job.state === 'finished') throw new QueueError(`job ${id} (${job.name}) has finished: nothing left to train. Delete it with its outputs to train it again.`);
    if (job.state !== 'stopped' && job.state !== 'failed') throw new QueueError(`job ${id} (${job.name}) is ${job.state}; only a stopped or failed job can be requeued`);
    this.db.prepare("UPDATE jobs SET state = 'queued', position = ?, stop_requested = NULL, updated_at = ? WHERE id = ?").run(this.endPosition(job.gpu), now(), id);
    return this.get(id);
  }

  /** Move a queued job up (-1) or down (+1) among the queued jobs of its GPU, or to the top ('top'). */
  move(id: number, by: -1 | 1 | 'top'): JobRow {
    return this.db.transaction(() => {
      const job = this.get(id);
      if (job.state !== 'queued') throw new QueueError(`job ${id} (${job.name}) is ${job.state}; only queued jobs can be reordered`);
      const queued = this.db.prepare("SELECT * FROM jobs WHERE state = 'queued' AND gpu = ? ORDER BY position, id").all(job.gpu) as JobRow[];
      const i = queued.findIndex((j) => j.id === id);
      const j = by === 'top' ? 0 : Math.max(0, Math.min(queued.length - 1, i + by));
      if (i === j) return job;
      const order = queued.filter((q) => q.id !== id);
      order.splice(j, 0, job);
      const base = queued[0]!.position;
      const set = this.db.prepare('UPDATE jobs SET position = ?, updated_at = ? WHERE id = ?');
      order.forEach((q, k) => set.run(base + k, now(), q.id));
      return this.get(id);
    })();
  }

  /** Forget a job; with outputs, also delete what training wrote in its folder (never config.yaml, job.json or data). */
  remove(id: number, outputs: boolean): string[] {
    const job = this.get(id);
    if (ACTIVE.includes(job.state)) throw new QueueError(`job ${id} (${job.name}) is ${job.state}; stop it first`);
    const removed = outputs ? deleteOutputs(jobDirOf(job)) : [];
    this.db.prepare('DELETE FROM jobs WHERE id = ?').run(id);
    return removed;
  }
}

/** The files a run writes into a job folder: metrics, log, samples, state and the LoRA files. */
export function outputPaths(jobDir: string): string[] {
  if (!existsSync(jobDir)) return [];
  let name = '';
  try {
    name = String((JSON.parse(readFileSync(join(jobDir, 'job.json'), 'utf8')) as { name?: unknown }).name ?? '');
  } catch { /* no job.json: no LoRA files to recognise */ }
  const lora = name ? new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(_\\d{9})?\\.safetensors$`) : undefined;
  return readdirSync(jobDir)
    .filter((f) => ['metrics.jsonl', 'log.txt', 'samples', 'state'].includes(f) || (lora?.test(f) ?? false))
    .map((f) => join(jobDir, f));
}

export function deleteOutputs(jobDir: string): string[] {
  const paths = outputPaths(jobDir);
  for (const p of paths) rmSync(p, { recursive: true, force: true });
  return paths;
}
