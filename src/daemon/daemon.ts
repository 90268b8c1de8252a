// The queue daemon: one per graft home. It owns the run states in SQLite, starts each job's stages under
// node-pty in the job folder (CUDA_VISIBLE_DEVICES set), one running job per GPU (one CPU slot without GPUs),
// writes the pty stream to log.txt and records pid, exit code and the last error line. Requests arrive as
// one JSON line per connection on a Unix socket (mode 0600).
//
// Trainers outlive the daemon: they are started with SIGHUP ignored, so a daemon killed by SIGKILL (its pty
// closing) does not take them down. The next daemon re-adopts a trainer that still runs (same pid and start
// time), or records how it ended from metrics.jsonl; queued jobs stay queued and no job is started twice
// (a job is marked running before its trainer starts, and a running job with no pid is looked for by its
// command line before anything else happens).
import { appendFileSync, chmodSync, closeSync, existsSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { IPty } from 'node-pty';
import { probeGpus, type Gpu } from '../gpu.js';
import { readMetrics } from '../monitor/metrics.js';
import { jobDirOf, Queue, QueueError, resolveJob } from '../queue/queue.js';
import { Store, type JobRow } from '../queue/store.js';
import { findTrainer, isAlive, processStart } from './proc.js';
import { socketPath, type Reply, type Request } from './socket.js';
import { planStages, type Stage } from './stages.js';

type Slot = number | 'cpu';

interface Run {
  id: number;
  slot: Slot;
  jobDir: string;
  pid: number;
  pidStart: number | null;
  /** Started by this daemon (its pty stream is logged) or re-adopted after a restart (polled by pid). */
  pty?: IPty;
  logFd?: number;
  /** The last few KB of the stream, for the last error line. */
  tail: string;
  stages: Stage[];
  stage: number;
  killTimer?: NodeJS.Timeout;
}

const ANSI = /\u001B\[[0-?]*[ -/]*[@-~]|\u001B[@-Z\\-_]/g;

/** The last non-empty line of a terminal stream (progress lines overwritten with \r count as lines). */
export function lastLine(stream: string): string | null {
  const lines = stream.replace(ANSI, '').split(/\r\n|\n|\r/).map((l) => l.trim()).filter(Boolean);
  return lines[lines.length - 1] ?? null;
}

function stamp(): string {
  return new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

export class Daemon {
  readonly store: Store;
  readonly queue: Queue;
  private server?: Server;
  private runs = new Map<number, Run>();
  private slots: Slot[] = [];
  private gpus: Gpu[] = [];
  private timer?: NodeJS.Timeout;
  private shuttingDown = false;
  private ptyModule?: typeof import('node-pty');

  constructor(readonly home: string, private env: NodeJS.ProcessEnv = process.env) {
    this.store = new Store(home);
    this.queue = new Queue(this.store);
  }

  private log(msg: string): void {
    process.stdout.write(`${stamp()} ${msg}\n`);
  }

  /** Become the daemon of this home (false: another live daemon is), re-adopt, listen, schedule. */
  async start(): Promise<boolean> {
    const me = { pid: process.pid, start: processStart(process.pid) };
    const sock = socketPath(this.home);
    const claimed = this.store.db.transaction(() => {
      const row = this.store.db.prepare('SELECT * FROM daemon WHERE id = 1').get() as { pid: number; pid_start: number | null } | undefined;
      if (row && row.pid !== me.pid && isAlive(row.pid, row.pid_start)) return false;
      this.store.db.prepare('INSERT OR REPLACE INTO daemon (id, pid, pid_start, socket, started_at) VALUES (1, ?, ?, ?, ?)').run(me.pid, me.start, sock, new Date().toISOString());
      return true;
    }).immediate();
    if (!claimed) return false;
    this.ptyModule = await import('node-pty');
    this.gpus = await probeGpus();
    this.slots = this.gpus.length ? this.gpus.map((g) => g.index) : ['cpu'];
    this.log(`daemon ${process.pid} for ${this.home}: slots ${this.slots.map((s) => (s === 'cpu' ? 'cpu' : `gpu${s}`)).join(', ')}`);
    this.reconcile();
    if (existsSync(sock)) unlinkSync(sock);
    this.server = createServer((c) => this.serve(c));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(sock, () => resolve());
    });
    chmodSync(sock, 0o600);
    this.timer = setInterval(() => this.tick(), 500);
    this.schedule();
    return true;
  }

  private slotOf(job: JobRow): Slot | null {
    if (this.slots[0] === 'cpu') return 'cpu';
    return this.slots.includes(job.gpu) ? job.gpu : null;
  }

  /** After a restart: every job left running is re-adopted if its trainer lives, else its end is recorded. */
  private reconcile(): void {
    for (const job of this.queue.active()) {
      const dir = jobDirOf(job);
      let found: { pid: number; start: number | null } | undefined;
      if (job.pid && isAlive(job.pid, job.pid_start)) found = { pid: job.pid, start: job.pid_start };
      else if (!job.pid) found = findTrainer(dir);
      if (found) {
        this.queue.setPid(job.id, found.pid, found.start);
        this.runs.set(job.id, { id: job.id, slot: this.slotOf(job) ?? 'cpu', jobDir: dir, pid: found.pid, pidStart: found.start, tail: '', stages: [], stage: 0 });
        this.appendLog(dir, `\n=== graft: the daemon restarted (${stamp()}) and re-adopted the running trainer (pid ${found.pid}); its terminal output from here on is not captured, metrics.jsonl goes on ===\n`);
        this.log(`job ${job.id}: re-adopted trainer pid ${found.pid}`);
      } else {
        this.endFromMetrics(job, job.pid
          ? `the trainer (pid ${job.pid}) ended while the daemon was down`
          : 'the daemon stopped before the trainer started');
      }
    }
  }

  /** Record the end of a run whose exit code is unknown (not our child): metrics.jsonl's end event says how it went. */
  private endFromMetrics(job: JobRow, why: string): void {
    const dir = jobDirOf(job);
    const m = readMetrics(join(dir, 'metrics.jsonl'));
    const step = m.end?.step ?? m.points[m.points.length - 1]?.step ?? 0;
    if (m.end?.status === 'finished') this.queue.finish(job.id, 'finished', null, null);
    else if (m.end?.status === 'stopped') this.queue.finish(job.id, 'stopped', null, null);
    else if (job.stop_requested) this.queue.finish(job.id, 'stopped', null, `force-stopped near step ${step}; resume continues from the last saved state`);
    else {
      const err = m.errors[m.errors.length - 1];
      this.queue.finish(job.id, 'failed', null, err ?? `${why} without finishing (last step ${step}); resume continues from the last saved state`);
    }
    this.appendLog(dir, `\n=== graft: ${why} (${stamp()}); recorded as ${this.store.job(job.id)?.state} ===\n`);
    this.log(`job ${job.id}: ${why}; now ${this.store.job(job.id)?.state}`);
  }

  private appendLog(dir: string, text: string): void {
    try { appendFileSync(join(dir, 'log.txt'), text); } catch { /* job folder gone */ }
  }

  private lastBusy = Date.now();

  private tick(): void {
    // A home that was deleted (a test's temp folder, a user's rm -rf) has nothing left to serve.
    if (!existsSync(this.home)) { void this.shutdown(false); return; }
    // Started on demand, so it also leaves when idle: no job queued or running for a while.
    const idleS = Number(this.env.GRAFT_DAEMON_IDLE_S ?? 600);
    const busy = this.runs.size > 0 || this.store.listJobs().some((j) => j.state === 'queued' || j.state === 'running' || j.state === 'stopping');
    if (busy) this.lastBusy = Date.now();
    else if (idleS > 0 && Date.now() - this.lastBusy > idleS * 1000) { this.log(`idle for ${idleS} s`); void this.shutdown(false); return; }
    for (const run of this.runs.values()) {
      if (!run.pty && !isAlive(run.pid, run.pidStart)) {
        this.runs.delete(run.id);
        const job = this.store.job(run.id);
        if (job) this.endFromMetrics(job, `the re-adopted trainer (pid ${run.pid}) exited`);
      }
    }
    this.schedule();
  }

  /** Start the next queued job of every free slot. */
  schedule(): void {
    if (this.shuttingDown) return;
    for (const slot of this.slots) {
      if ([...this.runs.values()].some((r) => r.slot === slot)) continue;
      const job = this.queue.next(slot);
      if (job) this.launch(job, slot);
    }
    // Jobs queued on a GPU this machine does not have would wait forever: say so.
    if (this.slots[0] !== 'cpu') {
      for (const job of this.store.listJobs()) {
        if (job.state === 'queued' && this.slotOf(job) === null) {
          this.queue.finish(job.id, 'failed', null, `GPU ${job.gpu} not found: this machine has GPU ${this.slots.join(', ')}. Requeue it on one of those.`);
        }
      }
    }
  }

  private launch(job: JobRow, slot: Slot): void {
    const dir = jobDirOf(job);
    const plan = planStages(dir, this.env);
    if (!this.queue.claim(job.id, 'error' in plan ? 'prepare' : plan.stages[0]!.name)) return;
    if ('error' in plan) {
      this.queue.finish(job.id, 'failed', null, plan.error);
      this.log(`job ${job.id}: ${plan.error}`);
      return;
    }
    const run: Run = { id: job.id, slot, jobDir: dir, pid: 0, pidStart: null, tail: '', stages: plan.stages, stage: 0 };
    this.runs.set(job.id, run);
    this.startStage(run);
  }

  private startStage(run: Run): void {
    const stage = run.stages[run.stage]!;
    const job = this.store.job(run.id)!;
    this.queue.setStage(run.id, stage.name);
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(this.env)) if (v !== undefined) env[k] = v;
    env.CUDA_VISIBLE_DEVICES = run.slot === 'cpu' ? '' : String(run.slot);
    env.TERM = 'xterm-256color';
    try {
      run.logFd = openSync(join(run.jobDir, 'log.txt'), 'a');
      writeSync(run.logFd, `=== graft: run ${job.runs} of job ${job.id} '${job.name}', stage ${stage.name}, ${stamp()}: ${stage.file} ${stage.args.join(' ')} (CUDA_VISIBLE_DEVICES=${env.CUDA_VISIBLE_DEVICES}) ===\n`);
      // `trap "" HUP` makes the trainer ignore SIGHUP (kept across exec): it survives the daemon's pty closing.
      run.pty = this.ptyModule!.spawn('/bin/sh', ['-c', 'trap "" HUP; exec "$0" "$@"', stage.file, ...stage.args], {
        name: 'xterm-256color', cols: 120, rows: 30, cwd: run.jobDir, env,
      });
    } catch (err) {
      if (run.logFd !== undefined) closeSync(run.logFd);
      this.runs.delete(run.id);
      this.queue.finish(run.id, 'failed', null, `cannot start ${stage.file}: ${(err as Error).message}`);
      return;
    }
    run.pid = run.pty.pid;
    run.pidStart = processStart(run.pid);
    this.queue.setPid(run.id, run.pid, run.pidStart);
    this.log(`job ${run.id}: started ${stage.name} pid ${run.pid} in ${run.jobDir}`);
    run.pty.onData((d) => {
      if (run.logFd !== undefined) { try { writeSync(run.logFd, d); } catch { /* disk full: keep running */ } }
      run.tail = (run.tail + d).slice(-8192);
    });
    run.pty.onExit(({ exitCode, signal }) => this.exited(run, exitCode, signal ?? 0));
    // A stop asked for between the claim and now.
    if (job.stop_requested) this.signal(run, job.stop_requested === 'force');
  }

  private exited(run: Run, code: number, signal: number): void {
    if (run.killTimer) clearTimeout(run.killTimer);
    const how = signal ? `killed by signal ${signal}` : `exit code ${code}`;
    if (run.logFd !== undefined) {
      try { writeSync(run.logFd, `\n=== graft: ${run.stages[run.stage]!.name} ended (${how}), ${stamp()} ===\n`); } catch { /* ignore */ }
      closeSync(run.logFd);
      run.logFd = undefined;
    }
    const job = this.store.job(run.id);
    if (!job) { this.runs.delete(run.id); return; }
    if (code === 0 && !signal && run.stage + 1 < run.stages.length && !job.stop_requested) {
      run.stage += 1;
      this.startStage(run);
      return;
    }
    this.runs.delete(run.id);
    const m = readMetrics(join(run.jobDir, 'metrics.jsonl'));
    const step = m.end?.step ?? m.points[m.points.length - 1]?.step ?? 0;
    const exitCode = signal ? 128 + signal : code;
    if (code === 0 && !signal) this.queue.finish(run.id, 'finished', 0, null);
    else if (code === 130 || m.end?.status === 'stopped') this.queue.finish(run.id, 'stopped', exitCode, null);
    else if (job.stop_requested) this.queue.finish(run.id, 'stopped', exitCode, `force-stopped near step ${step}; resume continues from the last saved state`);
    else {
      const err = m.errors[m.errors.length - 1];
      this.queue.finish(run.id, 'failed', exitCode, err ?? lastLine(run.tail) ?? `the trainer ended with ${how}`);
    }
    this.log(`job ${run.id}: ${how}; now ${this.store.job(run.id)?.state}`);
    this.schedule();
  }

  private signal(run: Run, force: boolean): void {
    try { process.kill(run.pid, force ? 'SIGTERM' : 'SIGINT'); } catch { /* already gone */ }
    if (force && !run.killTimer) {
      run.killTimer = setTimeout(() => { if (isAlive(run.pid, run.pidStart)) { try { process.kill(run.pid, 'SIGKILL'); } catch { /* gone */ } } }, 15_000);
    }
  }

  /** Why a job cannot have the GPU it asks for on this machine (--gpu, or the config's device cuda:N). */
  private slotProblem(flag: number | undefined, device: number | undefined): string | undefined {
    const cpuOnly = this.slots[0] === 'cpu';
    const have = cpuOnly ? 'this machine has no GPU (jobs run in its CPU slot)' : `this machine has GPU ${this.slots.join(', ')}`;
    if (flag !== undefined && (cpuOnly || !this.slots.includes(flag))) return `--gpu ${flag}: no GPU ${flag}: ${have}${cpuOnly ? '; leave --gpu out' : ''}`;
    if (flag === undefined && device !== undefined && cpuOnly) return `device cuda:${device}: ${have}; set device: cpu in the config`;
    if (flag === undefined && device !== undefined && !this.slots.includes(device)) return `device cuda:${device}: no GPU ${device}: ${have}; set device: cuda:${this.slots[0]} or pass --gpu`;
    return undefined;
  }

  private handle(req: Request): Reply {
    switch (req.op) {
      case 'ping':
        return { ok: true, pid: process.pid, slots: this.slots, gpus: this.gpus, running: [...this.runs.values()].map((r) => ({ id: r.id, pid: r.pid, slot: r.slot, adopted: !r.pty })) };
      case 'add': {
        const r = resolveJob(req.target, this.home);
        const why = this.slotProblem(req.gpu, r.gpu);
        if (why) return { ok: false, error: why };
        const job = this.queue.add(r, req.gpu);
        this.schedule();
        return { ok: true, job: this.store.job(job.id), message: `queued job ${job.id} '${job.name}' on ${this.slots[0] === 'cpu' ? 'the CPU slot' : `GPU ${job.gpu}`}` };
      }
      case 'stop': {
        const before = this.queue.get(req.id);
        if (before.state === 'stopping' && before.stop_requested === 'graceful' && !req.force) {
          return { ok: true, job: before, message: `job ${req.id} is already stopping (saving first); force-stop it to stop at once` };
        }
        const job = this.queue.requestStop(req.id, req.force ?? false);
        const run = this.runs.get(req.id);
        if (run) this.signal(run, req.force ?? false);
        return { ok: true, job, message: job.state === 'stopped' ? `job ${req.id} taken out of the queue` : req.force ? `job ${req.id}: stopping at once` : `job ${req.id}: saving a checkpoint, then stopping` };
      }
      case 'resume': {
        const job = this.queue.resume(req.id);
        this.schedule();
        return { ok: true, job: this.store.job(job.id), message: `job ${req.id} resumes next on its slot` };
      }
      case 'extend': {
        const { job, kept, from } = this.queue.extend(req.id, req.steps);
        this.schedule();
        return { ok: true, job: this.store.job(job.id), message: `job ${req.id}: train.steps ${req.steps} written to ${job.config_path}${kept ? '' : ' (rewritten whole: its comments are gone)'}; it resumes from step ${from}, next on its slot` };
      }
      case 'requeue': {
        const job = this.queue.requeue(req.id);
        this.schedule();
        return { ok: true, job: this.store.job(job.id), message: `job ${req.id} requeued at the end` };
      }
      case 'move': return { ok: true, job: this.queue.move(req.id, req.by) };
      case 'rm': {
        const removed = this.queue.remove(req.id, req.outputs ?? false);
        return { ok: true, removed, message: `job ${req.id} deleted${req.outputs ? ` with ${removed.length} output file(s)` : ' (outputs kept on disk)'}` };
      }
      case 'shutdown':
        setTimeout(() => void this.shutdown(true), 100); // after the reply has gone out
        return { ok: true, message: `daemon ${process.pid} stopping${this.runs.size ? `: ${this.runs.size} running job(s) save and stop first` : ''}` };
      default:
        return { ok: false, error: `unknown request ${JSON.stringify((req as { op?: unknown }).op)}` };
    }
  }

  private serve(c: Socket): void {
    this.lastBusy = Date.now();
    let buf = '';
    c.setEncoding('utf8');
    c.on('error', () => {});
    c.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      let reply: Reply;
      try {
        reply = this.handle(JSON.parse(buf.slice(0, nl)) as Request);
      } catch (err) {
        reply = { ok: false, error: err instanceof QueueError ? err.message : `${(err as Error).message}` };
      }
      c.end(`${JSON.stringify(reply)}\n`);
    });
  }

  /** Leave: with stopJobs, running jobs first save and stop (they can be resumed); otherwise they run on and the next daemon re-adopts them. */
  async shutdown(stopJobs: boolean): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    if (stopJobs) {
      for (const run of this.runs.values()) {
        try { this.queue.requestStop(run.id, false); } catch { /* already ending */ }
        this.signal(run, false);
      }
      const start = Date.now();
      while ([...this.runs.values()].some((r) => r.pty) && Date.now() - start < 120_000) await new Promise((r) => setTimeout(r, 100));
    }
    if (this.timer) clearInterval(this.timer);
    this.server?.close();
    try { unlinkSync(socketPath(this.home)); } catch { /* gone */ }
    try { this.store.db.prepare('DELETE FROM daemon WHERE id = 1 AND pid = ?').run(process.pid); } catch { /* home gone */ }
    this.log(`daemon ${process.pid} stopped`);
    try { this.store.close(); } catch { /* home gone */ }
    process.exit(0);
  }
}

/** `graft daemon run`: the daemon's process (started detached by the client). */
export async function runDaemon(home: string): Promise<number> {
  process.title = 'graft-daemon';
  const d = new Daemon(home);
  if (!(await d.start())) {
    process.stdout.write(`${stamp()} another daemon already serves ${home}\n`);
    d.store.close();
    return 0;
  }
  process.on('SIGHUP', () => {});
  process.on('SIGINT', () => void d.shutdown(false));
  process.on('SIGTERM', () => void d.shutdown(false));
  await new Promise(() => {});
  return 0;
}
