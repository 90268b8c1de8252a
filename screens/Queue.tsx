// Training Queue: each GPU's ordered queue (one CPU slot on a machine without GPUs), with every action:
// queue, stop, force stop, resume, requeue, reorder, delete (asks; outputs only when told), add a job folder.
import { Box, Text, useInput } from 'ink';
import { resolve } from 'node:path';
import { useState } from 'react';
import { useStateChange } from '../src/hooks/useStateChange.js';
import type { Request } from '../src/daemon/socket.js';
import { jobProgress, type DaemonStatus } from '../src/hooks/useQueue.js';
import { formatDuration } from '../src/monitor/metrics.js';
import { jobDirOf, outputPaths } from '../src/queue/queue.js';
import type { JobRow } from '../src/queue/store.js';
import { stateColor } from './Monitor.js';
import { MessageLine, StatusBar, type Hint } from './components/StatusBar.js';
import { TextInput } from './components/TextInput.js';

export const QUEUE_KEYS: Hint[] = [
  ['↑↓ j/k', 'choose a job'], ['Enter', 'open the job monitor (a draft: New Job)'], ['s', 'queue the job (start when its GPU is free)'],
  ['x', 'stop: save a checkpoint, then stop'], ['X', 'force stop at once (asks)'], ['r', 'resume a stopped/failed job (next in line)'],
  ['R', 'requeue at the end'], ['K J', 'move up / down in its queue'], ['T', 'move to the top'], ['d', 'delete (asks; outputs only when told)'],
  ['a', 'add a job: its config.yaml or job folder'], ['e', 'open the config in New Job'], ['Esc', 'back'],
];

const ORDER: Record<string, number> = { running: 0, stopping: 0, queued: 1, draft: 2, stopped: 3, failed: 4, finished: 5 };

/** Rows grouped by slot: each GPU's jobs (or all of them in the CPU slot), running first, then the queue in order. */
export function queueGroups(jobs: JobRow[], slots: (number | 'cpu')[] | undefined): { title: string; jobs: JobRow[] }[] {
  const sort = (a: JobRow, b: JobRow) => (ORDER[a.state]! - ORDER[b.state]!) || (a.state === 'queued' ? a.position - b.position : 0) || a.id - b.id;
  if (!slots || slots[0] === 'cpu') return [{ title: slots ? 'CPU slot (no GPU on this machine): one job at a time' : 'queue', jobs: [...jobs].sort(sort) }];
  const gpus = [...new Set([...slots as number[], ...jobs.map((j) => j.gpu)])].sort((a, b) => a - b);
  return gpus.map((g) => ({ title: `GPU ${g}${(slots as number[]).includes(g) ? '' : ' (not on this machine)'}`, jobs: jobs.filter((j) => j.gpu === g).sort(sort) }));
}

interface Props {
  jobs: JobRow[];
  daemon: DaemonStatus;
  active: boolean;
  width: number;
  height: number;
  act: (req: Request) => Promise<{ ok: boolean; text: string }>;
  onOpen: (job: JobRow) => void;
  onEdit: (job: JobRow) => void;
  setCapture: (on: boolean) => void;
  cpuOnly: boolean;
}

type Mode = { kind: 'list' } | { kind: 'add' } | { kind: 'delete'; job: JobRow; outputs: number } | { kind: 'force'; job: JobRow };

export function Queue({ jobs, daemon, active, width, height, act, onOpen, onEdit, setCapture, cpuOnly }: Props) {
  // The selection follows the job (not the row), so it stays put while rows move and refresh.
  const [selId, setSelId] = useState<number | undefined>();
  const [mode, setMode] = useState<Mode>({ kind: 'list' });
  const [message, setMessage] = useState<{ level: 'info' | 'error'; text: string } | undefined>();
  const groups = queueGroups(jobs, daemon.slots);
  const flatJobs = groups.flatMap((g) => g.jobs);
  const found = flatJobs.findIndex((j) => j.id === selId);
  const i = found >= 0 ? found : 0;
  const sel = flatJobs[i];
  const setIndex = (k: number) => setSelId(flatJobs[k]?.id);

  const run = (req: Request) => { void act(req).then((r) => setMessage({ level: r.ok ? 'info' : 'error', text: r.text })); };
  // What an action answered stays only until the job's state moves on: a "queued job 1" line must not
  // stand next to the same job once it has failed (its reason is shown instead).
  useStateChange(sel, () => setMessage(undefined));

  useInput((input, key) => {
    if (mode.kind === 'delete') {
      setMode({ kind: 'list' });
      setCapture(false);
      if (input === 'y') run({ op: 'rm', id: mode.job.id, outputs: false });
      else if (input === 'o') run({ op: 'rm', id: mode.job.id, outputs: true });
      else setMessage({ level: 'info', text: 'nothing deleted' });
      return;
    }
    if (mode.kind === 'force') {
      setMode({ kind: 'list' });
      setCapture(false);
      if (input === 'y') run({ op: 'stop', id: mode.job.id, force: true });
      else setMessage({ level: 'info', text: 'not stopped' });
      return;
    }
    if (mode.kind !== 'list') return;
    setMessage(undefined);
    if (key.upArrow || input === 'k') setIndex(Math.max(0, i - 1));
    else if (key.downArrow || input === 'j') setIndex(Math.min(flatJobs.length - 1, i + 1));
    else if (input === 'a') { setMode({ kind: 'add' }); setCapture(true); }
    else if (!sel) return;
    else if (key.return) (sel.state === 'draft' ? onEdit : onOpen)(sel);
    else if (input === 's') run({ op: 'add', target: jobDirOf(sel) });
    else if (input === 'x') run({ op: 'stop', id: sel.id });
    else if (input === 'X') { setMode({ kind: 'force', job: sel }); setCapture(true); }
    else if (input === 'r') run({ op: 'resume', id: sel.id });
    else if (input === 'R') run({ op: 'requeue', id: sel.id });
    else if (input === 'K' || input === 'J' || input === 'T') {
      run({ op: 'move', id: sel.id, by: input === 'K' ? -1 : input === 'J' ? 1 : 'top' });
    } else if (input === 'd') { setMode({ kind: 'delete', job: sel, outputs: outputPaths(jobDirOf(sel)).length }); setCapture(true); }
    else if (input === 'e') onEdit(sel);
  }, { isActive: active && mode.kind !== 'add' });

  if (!active) return null;
  const lines: ({ kind: 'title'; text: string } | { kind: 'job'; job: JobRow; at: number })[] = [];
  let at = 0;
  for (const g of groups) {
    lines.push({ kind: 'title', text: g.title });
    let n = 0;
    for (const j of g.jobs) lines.push({ kind: 'job', job: j, at: at++ }), n++;
    if (n === 0) lines.push({ kind: 'title', text: '  (empty)' });
  }
  // A failed job's reason in full, wrapped over up to three rows.
  const reason = sel?.state === 'failed' && sel.last_error ? `job ${sel.id} failed: ${sel.last_error}` : undefined;
  const reasonRows = mode.kind === 'list' && !message && reason ? Math.min(3, Math.ceil(reason.length / width)) : 1;
  const rows = Math.max(1, height - 4 - reasonRows);
  const selLine = lines.findIndex((l) => l.kind === 'job' && l.at === i);
  const start = Math.max(0, Math.min(selLine - Math.floor(rows / 2), lines.length - rows));
  const nameW = Math.max(8, Math.min(28, Math.floor(width * 0.25)));
  let queuePos = 0;

  const prompt = mode.kind === 'delete'
    ? `Delete job ${mode.job.id} '${mode.job.name}'? y: yes, keep files · o: also delete ${mode.outputs} output file(s) · other: no`
    : mode.kind === 'force' ? `Force-stop job ${mode.job.id} '${mode.job.name}' now, without saving? y: yes · other: no` : undefined;

  return (
    <Box flexDirection="column" width={width} height={height}>
      <Text bold color="cyan" wrap="truncate-end">TRAINING QUEUE <Text dimColor>{`(${jobs.length} job${jobs.length === 1 ? '' : 's'}; each GPU runs its own queue in order, one job at a time)`}</Text></Text>
      <Text dimColor wrap="truncate-end">{`    #   id  ${'state'.padEnd(9)} gpu  ${'name'.padEnd(nameW)}  progress      folder`}</Text>
      <Box flexDirection="column" height={rows}>
        {jobs.length === 0 ? <Text dimColor wrap="wrap">No jobs yet. a adds a job by its config.yaml or job folder; New Job (2) saves drafts.</Text> : null}
        {lines.slice(start, start + rows).map((l, k) => {
          if (l.kind === 'title') return <Text key={`t${k}`} bold wrap="truncate-end">{l.text}</Text>;
          const j = l.job;
          const p = jobProgress(j);
          const pos = j.state === 'queued' ? String(++queuePos) : '';
          const prog = p.steps ? `${p.step}/${p.steps}${j.state === 'running' ? ` ${formatDuration(p.etaS)}` : ''}` : '';
          return (
            <Text key={j.id} inverse={l.at === i} wrap="truncate-end">
              {`  ${pos.padStart(3)} ${String(j.id).padStart(4)}  `}<Text color={stateColor(j.state)}>{j.state.padEnd(9)}</Text>{` ${(cpuOnly ? 'cpu' : String(j.gpu)).padStart(3)}  ${j.name.padEnd(nameW).slice(0, nameW)}  ${prog.padEnd(12)}  ${jobDirOf(j)}`}
            </Text>
          );
        })}
      </Box>
      {mode.kind === 'add' ? (
        <Box width={width}>
          <Text color="cyan">Job folder: </Text>
          <TextInput
            initial=""
            width={width - 13}
            onSubmit={(v) => { setMode({ kind: 'list' }); setCapture(false); if (v.trim()) run({ op: 'add', target: resolve(v.trim()) }); }}
            onCancel={() => { setMode({ kind: 'list' }); setCapture(false); }}
          />
        </Box>
      ) : !prompt && !message && reason ? (
        <Box height={reasonRows} width={width} overflow="hidden"><Text color="red" wrap="wrap">{reason}</Text></Box>
      ) : (
        <MessageLine
          level={prompt ? 'warning' : message?.level ?? 'info'}
          text={prompt ?? message?.text ?? (sel ? (sel.last_error ? `job ${sel.id}: ${sel.last_error}` : `job ${sel.id}: ${sel.config_path}`) : ' ')}
          width={width}
        />
      )}
      <StatusBar hints={[['Enter', 'monitor'], ['s', 'queue'], ['x/X', 'stop'], ['r', 'resume'], ['R', 'requeue'], ['K/J', 'move'], ['d', 'delete'], ['a', 'add'], ['e', 'edit'], ['?', 'help']]} width={width} />
    </Box>
  );
}
