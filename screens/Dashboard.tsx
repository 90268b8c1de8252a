// Dashboard: every job with its state, progress and GPU, the daemon and the machine's GPUs. Enter opens a job's monitor.
import { Box, Text, useInput } from 'ink';
import { useState } from 'react';
import type { Gpu } from '../src/gpu.js';
import { jobProgress, type DaemonStatus } from '../src/hooks/useQueue.js';
import { bar } from '../src/monitor/chart.js';
import { formatDuration } from '../src/monitor/metrics.js';
import type { JobRow } from '../src/queue/store.js';
import { stateColor } from './Monitor.js';
import { MessageLine, StatusBar, type Hint } from './components/StatusBar.js';

export const DASHBOARD_KEYS: Hint[] = [['↑↓ j/k', 'choose a job'], ['Enter', 'open the job monitor'], ['1-5', 'switch screen'], ['q', 'quit (jobs keep running in the daemon)'], ['Ctrl+C', 'quit from anywhere']];

interface Props {
  jobs: JobRow[];
  datasets: number;
  gpus: Gpu[] | undefined;
  daemon: DaemonStatus;
  home: string;
  width: number;
  height: number;
  active: boolean;
  cpuOnly: boolean;
  onOpen: (job: JobRow) => void;
}

export function daemonText(d: DaemonStatus): string {
  if (d.state === 'running') return `daemon pid ${d.pid} · slots ${(d.slots ?? []).map((s) => (s === 'cpu' ? 'cpu' : `gpu ${s}`)).join(', ')}`;
  if (d.state === 'starting') return 'daemon starting...';
  return `daemon unavailable: ${d.error ?? 'unknown'}`;
}

export function Dashboard({ jobs, datasets, gpus, daemon, home, width, height, active, cpuOnly, onOpen }: Props) {
  const [index, setIndex] = useState(0);
  const shown = jobs.filter((j) => j.state !== 'draft');
  const drafts = jobs.length - shown.length;
  const i = Math.min(index, Math.max(0, shown.length - 1));
  useInput((input, key) => {
    if (key.upArrow || input === 'k') setIndex(Math.max(0, i - 1));
    if (key.downArrow || input === 'j') setIndex(Math.min(shown.length - 1, i + 1));
    if (key.return && shown[i]) onOpen(shown[i]!);
  }, { isActive: active });
  if (!active) return null;
  const running = shown.filter((j) => j.state === 'running' || j.state === 'stopping').length;
  const queued = shown.filter((j) => j.state === 'queued').length;
  const sel = shown[i];
  // A failed job's reason in full, wrapped over up to three rows.
  const reason = sel?.state === 'failed' ? `job ${sel.id} failed: ${sel.last_error ?? 'see its log'}` : undefined;
  const reasonRows = reason ? Math.min(3, Math.ceil(reason.length / width)) : 1;
  const rows = Math.max(1, height - 7 - reasonRows);
  const start = Math.max(0, Math.min(i - Math.floor(rows / 2), shown.length - rows));
  const nameW = Math.max(8, Math.min(28, Math.floor(width * 0.25)));
  const barW = Math.max(6, Math.min(30, width - nameW - 48));
  return (
    <Box flexDirection="column" width={width} height={height}>
      <Box flexDirection="column" paddingX={1}>
        <Text wrap="truncate-end"><Text bold color="cyan">graft</Text>{`  Jobs: ${jobs.length} (${drafts} draft${drafts === 1 ? '' : 's'}) · ${running} running · ${queued} queued · Datasets: ${datasets}`}</Text>
        <Text wrap="truncate-end">{`GPUs: ${gpus === undefined ? 'probing...' : gpus.length === 0 ? 'none found (nvidia-smi): jobs run one at a time on the CPU' : gpus.map((g) => `${g.index}: ${g.name} ${Math.round(g.memoryMb / 1024)} GB`).join(', ')}`}</Text>
        <Text wrap="truncate-end" color={daemon.state === 'unavailable' ? 'red' : undefined} dimColor={daemon.state !== 'unavailable'}>{`${daemonText(daemon)} · home ${home}`}</Text>
      </Box>
      <Text dimColor wrap="truncate-end">{`   id  ${'state'.padEnd(9)} gpu  ${'name'.padEnd(nameW)}  progress`}</Text>
      <Box flexDirection="column" height={rows}>
        {shown.length === 0 ? <Text dimColor wrap="wrap">{'  No jobs in the queue. Queue a config.yaml with `graft queue add <config.yaml>` or press a in the Training Queue (3); set one up in New Job (2).'}</Text> : null}
        {shown.slice(start, start + rows).map((j, k) => {
          const p = jobProgress(j);
          const prog = p.steps ? `[${bar(p.fraction, barW)}] ${p.step}/${p.steps}${j.state === 'running' ? ` ETA ${formatDuration(p.etaS)}` : ''}` : '';
          return (
            <Text key={j.id} inverse={start + k === i} wrap="truncate-end">
              {`${String(j.id).padStart(5)}  `}<Text color={stateColor(j.state)}>{j.state.padEnd(9)}</Text>{` ${(cpuOnly ? 'cpu' : String(j.gpu)).padStart(3)}  ${j.name.padEnd(nameW).slice(0, nameW)}  ${prog}`}
            </Text>
          );
        })}
      </Box>
      {reason
        ? <Box height={reasonRows} width={width} overflow="hidden"><Text color="red" wrap="wrap">{reason}</Text></Box>
        : <MessageLine level="info" text={sel ? `job ${sel.id}: ${sel.job_dir ?? sel.config_path}` : ' '} width={width} />}
      <StatusBar hints={[['↑↓', 'job'], ['Enter', 'monitor'], ['2', 'new job'], ['3', 'queue'], ['4', 'datasets'], ['?', 'help'], ['q', 'quit']]} width={width} />
    </Box>
  );
}
