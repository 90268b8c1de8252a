// The CLI for scripts and SSH one-liners: graft prepare, graft run, graft queue ..., graft daemon ..., graft logs.
// Queue changes go through the daemon (started on demand); listings read the database directly.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { DaemonError, ensureDaemon, ping, request } from './daemon/client.js';
import { runDaemon } from './daemon/daemon.js';
import { trainerPath } from './daemon/stages.js';
import { formatDuration, progressOf, readMetrics } from './monitor/metrics.js';
import { UsageError, type Parsed } from './cliSpec.js';
import { probeGpus } from './gpu.js';
import { graftHome } from './paths.js';
import { PrepareError } from './prepare/errors.js';
import { jobDirOf, outputPaths, QueueError, resolveJob } from './queue/queue.js';
import { Store, type JobRow } from './queue/store.js';

const out = (s: string) => process.stdout.write(`${s}\n`);
const err = (s: string) => process.stderr.write(`graft: ${s}\n`);

function withStore<T>(fn: (s: Store) => T): T {
  const s = new Store(graftHome());
  try { return fn(s); } finally { s.close(); }
}

/** A job by id, unique name or folder. */
export function findJob(store: Store, ref: string): JobRow {
  const jobs = store.listJobs();
  if (/^\d+$/.test(ref)) {
    const j = jobs.find((x) => x.id === Number(ref));
    if (j) return j;
  }
  const byName = jobs.filter((x) => x.name === ref);
  if (byName.length === 1) return byName[0]!;
  if (byName.length > 1) throw new QueueError(`${byName.length} jobs are named ${ref}: use the id (${byName.map((j) => j.id).join(', ')})`);
  const full = resolve(ref);
  const byDir = jobs.find((x) => jobDirOf(x) === full);
  if (byDir) return byDir;
  throw new QueueError(`no job ${JSON.stringify(ref)} (graft queue ls lists them)`);
}

async function send(req: Parameters<typeof request>[1]): Promise<number> {
  const r = await request(graftHome(), req);
  if (!r.ok) { err(r.error ?? 'failed'); return 1; }
  if (r.message) out(r.message);
  return 0;
}

async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  const answer = await new Promise<string>((r) => rl.question(`${question} [y/N] `, r));
  rl.close();
  return /^y(es)?$/i.test(answer.trim());
}

/** Whether this machine has no GPU (the daemon then runs one CPU slot), as nvidia-smi says. */
async function cpuOnly(): Promise<boolean> {
  return (await probeGpus()).length === 0;
}

export function listJobs(store: Store, noGpu: boolean): string[] {
  const jobs = store.listJobs();
  if (jobs.length === 0) return ['no jobs (graft queue add <job-dir> queues one)'];
  const lines = ['  id  state     gpu  pos  progress             name                  folder'];
  for (const j of jobs) {
    const dir = jobDirOf(j);
    const p = progressOf(readMetrics(join(dir, 'metrics.jsonl')));
    const prog = p.steps ? `${p.step}/${p.steps} ${String(Math.round(p.fraction * 100)).padStart(3)}%${j.state === 'running' ? ` eta ${formatDuration(p.etaS)}` : ''}` : '-';
    lines.push(`${String(j.id).padStart(4)}  ${j.state.padEnd(9)} ${(noGpu ? 'cpu' : String(j.gpu)).padStart(3)}  ${String(j.position).padStart(3)}  ${prog.padEnd(19)}  ${j.name.padEnd(20)}  ${dir}`);
    if (j.last_error && (j.state === 'failed' || j.state === 'stopped')) lines.push(`        ${j.state === 'failed' ? 'error' : 'note'}: ${j.last_error}`);
  }
  return lines;
}

/** The queue for scripts: one JSON array, a stable set of fields per job. */
export function jobsJson(store: Store, noGpu: boolean): unknown[] {
  return store.listJobs().map((j) => {
    const dir = jobDirOf(j);
    const p = progressOf(readMetrics(join(dir, 'metrics.jsonl')));
    return {
      id: j.id, name: j.name, state: j.state, gpu: noGpu ? null : j.gpu, slot: noGpu ? 'cpu' : `gpu${j.gpu}`, position: j.position,
      step: p.step, steps: p.steps, eta_s: j.state === 'running' ? p.etaS : null, loss: p.loss,
      job_dir: dir, config_path: j.config_path, last_error: j.last_error, exit_code: j.exit_code, runs: j.runs,
    };
  });
}

async function queueCommand(sub: string, pos: string[], v: Parsed['values']): Promise<number> {
  const home = graftHome();
  if (sub === 'add') {
    const gpu = v.gpu as string | undefined;
    if (gpu !== undefined && !/^\d+$/.test(gpu)) throw new UsageError(`--gpu ${gpu}: expected a GPU index (0, 1, ...)`);
    const target = resolve(pos[0]!);
    // Checked here too, so the message needs no daemon round trip.
    resolveJob(target, home);
    return send({ op: 'add', target, gpu: gpu === undefined ? undefined : Number(gpu) });
  }
  if (sub === 'ls') {
    const noGpu = await cpuOnly();
    if (v.json) { out(JSON.stringify(withStore((s) => jobsJson(s, noGpu)), null, 2)); return 0; }
    withStore((s) => listJobs(s, noGpu).forEach(out));
    return 0;
  }
  const job = withStore((s) => findJob(s, pos[0]!));
  switch (sub) {
    case 'stop': return send({ op: 'stop', id: job.id, force: v.force === true });
    case 'resume': return send({ op: 'resume', id: job.id });
    case 'requeue': return send({ op: 'requeue', id: job.id });
    case 'extend': {
      const steps = v.steps as string | undefined;
      if (steps === undefined || !/^\d+$/.test(steps)) throw new UsageError(`graft queue extend <job> --steps N: ${steps === undefined ? '--steps is missing' : `--steps ${steps}: expected a whole number`}`);
      return send({ op: 'extend', id: job.id, steps: Number(steps) });
    }
    case 'move': {
      const by = pos[1] === 'up' ? -1 : pos[1] === 'down' ? 1 : pos[1] === 'top' ? 'top' : undefined;
      if (by === undefined) throw new UsageError(`${JSON.stringify(pos[1])}: usage: graft queue move <job> up|down|top`);
      return send({ op: 'move', id: job.id, by });
    }
    case 'rm': {
      const outputs = v.outputs === true;
      if (v.yes !== true) {
        if (!process.stdin.isTTY) { err(`deleting job ${job.id} needs confirmation: add --yes (no terminal to ask)`); return 2; }
        const files = outputs ? outputPaths(jobDirOf(job)) : [];
        if (outputs) files.forEach((f) => out(`  will delete ${f}`));
        if (!(await confirm(`delete job ${job.id} '${job.name}'${outputs ? ` and ${files.length} output file(s)` : ' (its folder stays on disk)'}?`))) { out('nothing deleted'); return 1; }
      }
      return send({ op: 'rm', id: job.id, outputs });
    }
    default:
      throw new UsageError(`unknown command: graft queue ${sub}`);
  }
}

async function daemonCommand(sub: string, v: Parsed['values']): Promise<number> {
  const home = graftHome();
  switch (sub) {
    case 'run':
      return runDaemon(home);
    case 'start': {
      const r = await ensureDaemon(home);
      out(`daemon running: pid ${String(r.pid)}`);
      return 0;
    }
    case 'status': {
      const r = await ping(home);
      const running = (r?.running ?? []) as { id: number; pid: number; slot: number | string; adopted: boolean }[];
      if (v.json) {
        out(JSON.stringify(r ? { running: true, pid: r.pid, home, slots: r.slots, gpus: r.gpus, jobs: running } : { running: false, home }, null, 2));
        return r ? 0 : 3;
      }
      if (!r) { out(`no daemon running for ${home} (it starts on the next queue command or when the TUI opens)`); return 3; }
      out(`daemon running: pid ${String(r.pid)}, home ${home}`);
      out(`slots: ${(r.slots as (number | string)[]).map((s) => (s === 'cpu' ? 'cpu (no GPU found)' : `gpu ${s}`)).join(', ')}`);
      for (const x of running) out(`  job ${x.id}: trainer pid ${x.pid} on ${x.slot === 'cpu' ? 'cpu' : `gpu ${x.slot}`}${x.adopted ? ' (re-adopted after a daemon restart)' : ''}`);
      if (running.length === 0) out('  no job running');
      return 0;
    }
    default: { // stop
      const r = await ping(home);
      if (!r) { out('no daemon running'); return 0; }
      const reply = await request(home, { op: 'shutdown' });
      out(reply.message ?? 'stopping');
      const pid = Number(r.pid);
      const start = Date.now();
      while (Date.now() - start < 150_000) {
        try { process.kill(pid, 0); } catch { out('daemon stopped'); return 0; }
        await new Promise((res) => setTimeout(res, 100));
      }
      err(`daemon ${pid} still running after 150 s`);
      return 1;
    }
  }
}

/** Follow a file from the start; with follow, until stillRunning() says no and nothing new arrived. */
async function catFile(file: string, follow: boolean, stillRunning: () => boolean): Promise<void> {
  let offset = 0;
  for (;;) {
    if (existsSync(file)) {
      const size = statSync(file).size;
      if (size > offset) {
        const fd = openSync(file, 'r');
        const buf = Buffer.alloc(size - offset);
        readSync(fd, buf, 0, buf.length, offset);
        closeSync(fd);
        offset = size;
        process.stdout.write(buf);
        continue;
      }
    }
    if (!follow || !stillRunning()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function logsCommand(ref: string, follow: boolean): Promise<number> {
  const store = new Store(graftHome());
  try {
    const job = findJob(store, ref);
    const file = join(jobDirOf(job), 'log.txt');
    if (!existsSync(file) && !follow) { err(`job ${job.id} has no log yet (${file}): it has not run`); return 1; }
    await catFile(file, follow, () => {
      const j = store.job(job.id);
      return j !== undefined && (j.state === 'queued' || j.state === 'running' || j.state === 'stopping');
    });
    return 0;
  } finally {
    store.close();
  }
}

/** graft prepare: config.yaml -> prepared/ and job.json, with progress lines and a summary. */
async function prepareCommand(target: string): Promise<number> {
  await prepare(target, { log: out });
  return 0;
}

/** Preparation loads sharp and the tokenizer: only for the commands that prepare, so the others start fast. */
async function prepare(...args: Parameters<typeof import('./prepare/prepare.js').prepareJob>) {
  const { prepareJob } = await import('./prepare/prepare.js');
  return prepareJob(...args);
}

/** graft run: preparation when the job has a config.yaml, then the trainer in the foreground; its exit code is ours. */
async function runCommand(target: string): Promise<number> {
  const home = graftHome();
  const job = resolveJob(target, home);
  const queued = withStore((s) => s.listJobs().find((j) => jobDirOf(j) === job.jobDir && ['queued', 'running', 'stopping'].includes(j.state)));
  if (queued) { err(`${job.jobDir} is job ${queued.id} in the queue (${queued.state}); stop it there first (graft queue stop ${queued.id}) so it never runs twice`); return 1; }
  const trainer = trainerPath();
  if (!existsSync(trainer)) { err(`the trainer is not built: ${trainer} is missing (run make trainer, or set GRAFT_TRAINER)`); return 1; }
  // A config.yaml in the job folder is prepared there; one kept elsewhere is copied in first.
  if (/\.ya?ml$/i.test(job.configPath)) await prepare(job.configPath === join(job.jobDir, 'config.yaml') ? job.jobDir : job.configPath, { log: out, home });
  // The trainer gets its own process group: Ctrl+C reaches graft only, which passes on exactly one SIGINT
  // per press (first: save and stop; second: stop at once).
  const child = spawn(trainer, ['train', job.jobDir], { stdio: 'inherit', detached: true, cwd: job.jobDir });
  let presses = 0;
  const onInt = () => {
    presses += 1;
    process.stderr.write(presses === 1 ? '\ngraft: saving a checkpoint, then stopping (Ctrl+C again stops at once)\n' : '\ngraft: stopping at once\n');
    child.kill('SIGINT');
  };
  const onTerm = () => child.kill('SIGTERM');
  const onHup = () => child.kill('SIGINT');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  process.on('SIGHUP', onHup);
  const code: number = await new Promise((resolve) => {
    child.on('error', (e) => { err(`cannot start ${trainer}: ${e.message}`); resolve(1); });
    child.on('exit', (c, sig) => resolve(c ?? (sig ? 128 + 15 : 1)));
  });
  process.off('SIGINT', onInt);
  process.off('SIGTERM', onTerm);
  process.off('SIGHUP', onHup);
  const m = readMetrics(join(job.jobDir, 'metrics.jsonl'));
  if (code === 0) out(`graft: finished ${job.name}: ${job.jobDir}`);
  else if (code === 130) err(`stopped at step ${m.end?.step ?? '?'}; graft run ${job.jobDir} resumes it`);
  else err(`failed (exit ${code})${m.errors.length ? `: ${m.errors[m.errors.length - 1]}` : ''}`);
  return code;
}

/** graft download: a Hub model's files into the shared Hugging Face cache; the last line is the snapshot folder. */
async function downloadCommand(repoId: string, v: Parsed['values']): Promise<number> {
  const hub = await import('./hub/index.js');
  const ref = hub.parseRepoRef(repoId);
  if (!ref) throw new UsageError(`${JSON.stringify(repoId)} is not a Hub model id: write org/name or org/name@revision (e.g. black-forest-labs/FLUX.1-dev)`);
  const include = (v.include as string[] | undefined) ?? [];
  let family = v.family as string | undefined;
  if (family !== undefined && !hub.familyFiles(family)) {
    throw new UsageError(`--family ${family}: graft has no file selection for it (it has: ${hub.knownFamilies()}); name the files with --include`);
  }
  if (family === undefined && include.length === 0) {
    const known = hub.familyForRepo(ref.repo);
    family = known?.family;
    out(known ? `family ${known.family} (${known.label}), from the repo id; --include adds other files` : 'no --family or --include: every file of the repo');
  }
  if (v['tokenizers-only'] === true && family === undefined) throw new UsageError('--tokenizers-only needs --family (which tokenizers)');
  const stop = new AbortController();
  const onInt = () => { process.stderr.write('\ngraft: stopping the download (the next run resumes it)\n'); stop.abort(); };
  process.on('SIGINT', onInt);
  const terminal = process.stdout.isTTY ? hub.terminalReporter((s) => process.stdout.write(s)) : undefined;
  try {
    const r = await hub.ensureModelFiles(repoId, {
      revision: v.revision as string | undefined, family, include, tokenizersOnly: v['tokenizers-only'] === true,
      signal: stop.signal, onProgress: terminal?.onProgress ?? hub.lineLogger(out),
    });
    terminal?.finish();
    out(r.snapshotDir);
    return 0;
  } catch (e) {
    terminal?.finish();
    if (e instanceof hub.DownloadInterrupted) { err(e.message); return 130; }
    if (e instanceof hub.HubError) { err(e.message); return 1; }
    throw e;
  } finally {
    process.off('SIGINT', onInt);
  }
}

/** The commands this module serves (all but the TUI's, watch and validate), or undefined for those. */
export async function runCommandLine(p: Parsed): Promise<number | undefined> {
  const [cmd, sub] = p.spec.path;
  const pos = p.positionals;
  try {
    if (cmd === 'prepare') return await prepareCommand(pos[0]!);
    if (cmd === 'run') return await runCommand(pos[0]!);
    if (cmd === 'download') return await downloadCommand(pos[0]!, p.values);
    if (cmd === 'queue') return await queueCommand(sub!, pos, p.values);
    if (cmd === 'daemon') return await daemonCommand(sub!, p.values);
    if (cmd === 'logs') return await logsCommand(pos[0]!, p.values.follow === true);
  } catch (e) {
    if (e instanceof QueueError || e instanceof DaemonError || e instanceof PrepareError) { err((e as Error).message); return 1; }
    throw e;
  }
  return undefined;
}
