// Job monitor: one job live from its folder: progress and ETA, loss chart (raw + smoothed, log scale),
// learning rate and s/step, GPU or CPU/RAM panel, samples, checkpoints with full paths, and the log.
import { Box, Text, useInput } from 'ink';
import { hostname } from 'node:os';
import { useEffect, useMemo, useState } from 'react';
import type { Request } from '../src/daemon/socket.js';
import { renderThumbnail } from '../src/datasets/thumbnail.js';
import { useJobMonitor, useSystemStats } from '../src/hooks/useJobMonitor.js';
import { bar, formatValue, lineChart } from '../src/monitor/chart.js';
import { formatBytes, formatDuration, progressOf, smooth } from '../src/monitor/metrics.js';
import type { SystemStats } from '../src/monitor/system.js';
import { jobDirOf } from '../src/queue/queue.js';
import type { JobRow } from '../src/queue/store.js';
import { MessageLine, StatusBar, type Hint } from './components/StatusBar.js';

export const MONITOR_KEYS: Hint[] = [
  ['l', 'loss chart: linear / log scale'], ['x', 'stop: save a checkpoint, then stop'], ['X', 'force stop (asks)'],
  ['r', 'resume a stopped or failed job'], ['PgUp/PgDn u/d', 'scroll the log'], ['[ ]', 'samples: previous / next step'],
  ['p', 'samples: next prompt'], ['Esc q', 'back'],
];

const STATE_COLOR: Record<string, string> = { running: 'green', stopping: 'yellow', queued: 'cyan', finished: 'blue', failed: 'red', stopped: 'yellow', draft: 'gray' };

export function stateColor(state: string): string {
  return STATE_COLOR[state] ?? 'white';
}

interface Props {
  job: JobRow | undefined;
  active: boolean;
  width: number;
  height: number;
  act: (req: Request) => Promise<{ ok: boolean; text: string }>;
  system?: SystemStats;
}

/** Lines the GPU panel takes: compact is one line per GPU (or one for "no GPU"). */
export function gpuPanelLines(stats: SystemStats | undefined, compact: boolean): number {
  const n = stats?.gpus?.length ?? 0;
  if (!stats || n === 0) return compact ? 1 : 2;
  return compact ? n : n * 3 + 1;
}

function GpuPanel({ stats, width, compact }: { stats: SystemStats | undefined; width: number; compact?: boolean }) {
  if (!stats) return <Text dimColor>reading nvidia-smi...</Text>;
  const cpu = `CPU ${stats.cpuPct === null ? '-' : `${Math.round(stats.cpuPct)}%`}${stats.cores ? ` of ${stats.cores} cores` : ''}`;
  const ram = stats.memUsedMb !== null && stats.memTotalMb !== null ? `RAM ${(stats.memUsedMb / 1024).toFixed(1)}/${(stats.memTotalMb / 1024).toFixed(1)} GiB` : 'RAM -';
  if (!stats.gpus || stats.gpus.length === 0) {
    if (compact) return <Text wrap="truncate-end"><Text color="yellow">no GPU</Text><Text dimColor>{` (${stats.gpuError ?? 'nvidia-smi lists none'})`}</Text>{` · ${cpu} · ${ram}`}</Text>;
    return (
      <Box flexDirection="column">
        <Text wrap="truncate-end"><Text color="yellow">no GPU</Text><Text dimColor>{` (${stats.gpuError ?? 'nvidia-smi lists none'})`}</Text></Text>
        <Text wrap="truncate-end">{`${cpu} · ${ram}`}</Text>
      </Box>
    );
  }
  const gw = Math.max(8, Math.min(30, width - 34));
  if (compact) {
    return (
      <Box flexDirection="column">
        {stats.gpus.map((g) => (
          <Text key={g.index} wrap="truncate-end">{`GPU ${g.index} VRAM [${bar(g.memUsedMb / g.memTotalMb, 12)}] ${(g.memUsedMb / 1024).toFixed(1)}/${(g.memTotalMb / 1024).toFixed(0)} GiB · ${Number.isFinite(g.utilPct) ? g.utilPct : '-'}% · ${Number.isFinite(g.tempC) ? g.tempC : '-'}°C · ${Number.isFinite(g.powerW) ? Math.round(g.powerW) : '-'} W · ${g.name}`}</Text>
        ))}
      </Box>
    );
  }
  return (
    <Box flexDirection="column">
      {stats.gpus.map((g) => (
        <Box key={g.index} flexDirection="column">
          <Text wrap="truncate-end"><Text bold>{`GPU ${g.index}`}</Text>{` ${g.name}`}</Text>
          <Text wrap="truncate-end">{`VRAM [${bar(g.memUsedMb / g.memTotalMb, gw)}] ${(g.memUsedMb / 1024).toFixed(1)}/${(g.memTotalMb / 1024).toFixed(0)} GiB`}</Text>
          <Text wrap="truncate-end">{`util ${Number.isFinite(g.utilPct) ? g.utilPct : '-'}% · ${Number.isFinite(g.tempC) ? g.tempC : '-'}°C · ${Number.isFinite(g.powerW) ? Math.round(g.powerW) : '-'}/${Number.isFinite(g.powerLimitW) ? Math.round(g.powerLimitW) : '-'} W`}</Text>
        </Box>
      ))}
      <Text wrap="truncate-end" dimColor>{`${cpu} · ${ram}`}</Text>
    </Box>
  );
}

export function Monitor({ job, active, width, height, act, system }: Props) {
  const dir = job ? jobDirOf(job) : undefined;
  const view = useJobMonitor(active ? dir : undefined);
  const stats = useSystemStats(active, system);
  const [log, setLog] = useState(false);
  const [scroll, setScroll] = useState(0);
  const [message, setMessage] = useState<{ level: 'info' | 'error'; text: string } | undefined>();
  const [confirmForce, setConfirmForce] = useState(false);
  const [sampleIdx, setSampleIdx] = useState(-1);
  const [thumb, setThumb] = useState<{ key: string; text: string }>();

  const m = view.metrics;
  const prog = progressOf(m);
  const wide = width >= 120 && height >= 36;
  const logRows = wide ? Math.max(4, Math.floor(height * 0.22)) : 3;

  useInput((input, key) => {
    if (!job) return;
    if (confirmForce) {
      setConfirmForce(false);
      if (input === 'y') void act({ op: 'stop', id: job.id, force: true }).then((r) => setMessage({ level: r.ok ? 'info' : 'error', text: r.text }));
      else setMessage({ level: 'info', text: 'not stopped' });
      return;
    }
    setMessage(undefined);
    if (input === 'l') setLog((v) => !v);
    else if (input === 'x') void act({ op: 'stop', id: job.id }).then((r) => setMessage({ level: r.ok ? 'info' : 'error', text: r.text }));
    else if (input === 'X') { setConfirmForce(true); setMessage({ level: 'error', text: `Force-stop job ${job.id} now, without saving? y: yes · other: no` }); }
    else if (input === 'r') void act({ op: 'resume', id: job.id }).then((r) => setMessage({ level: r.ok ? 'info' : 'error', text: r.text }));
    else if (key.pageUp || input === 'u') setScroll((s) => Math.min(Math.max(0, view.log.filter((l) => l.trim() !== '').length - logRows), s + logRows));
    else if (key.pageDown || input === 'd') setScroll((s) => Math.max(0, s - logRows));
    else if (input === '[' || input === ']' || input === 'p') {
      const n = view.samples.length;
      if (n === 0) { setMessage({ level: 'info', text: 'no samples yet' }); return; }
      const cur = sampleIdx < 0 || sampleIdx >= n ? n - 1 : sampleIdx;
      const s = view.samples[cur]!;
      if (input === 'p') {
        const same = view.samples.map((x, i) => [x, i] as const).filter(([x]) => x.step === s.step);
        const k = same.findIndex(([, i]) => i === cur);
        setSampleIdx(same[(k + 1) % same.length]![1]);
      } else {
        // The same prompt at the previous / next step that has it.
        const steps = view.samples.map((x, i) => [x, i] as const).filter(([x]) => x.prompt === s.prompt);
        const k = steps.findIndex(([, i]) => i === cur);
        const next = steps[Math.max(0, Math.min(steps.length - 1, k + (input === ']' ? 1 : -1)))]!;
        setSampleIdx(next[1]);
      }
    }
  }, { isActive: active });

  const sample = view.samples.length ? view.samples[sampleIdx < 0 || sampleIdx >= view.samples.length ? view.samples.length - 1 : sampleIdx] : undefined;
  const thumbW = wide ? Math.min(40, Math.floor(width * 0.4) - 4) : 0;
  const thumbKey = sample && thumbW > 0 ? `${sample.file}:${thumbW}` : '';
  useEffect(() => {
    if (!thumbKey || !sample) return undefined;
    let live = true;
    void renderThumbnail(sample.file, thumbW, 10).catch((e: Error) => `(cannot draw: ${e.message})`).then((text) => { if (live) setThumb({ key: thumbKey, text }); });
    return () => { live = false; };
  }, [thumbKey]);

  const raw = useMemo(() => m.points.map((p) => p.loss), [m]);
  const smoothed = useMemo(() => smooth(raw), [raw]);

  if (!active) return null;
  if (!job) {
    return (
      <Box flexDirection="column" width={width} height={height}>
        <Text bold color="cyan">JOB MONITOR</Text>
        <Text>No job chosen. Open one with Enter in the Dashboard (1) or the Training Queue (3).</Text>
        <Box flexGrow={1} />
        <StatusBar hints={[['1', 'dashboard'], ['3', 'queue'], ['q', 'back']]} width={width} />
      </Box>
    );
  }

  const stateLine = job.state === 'failed' && job.last_error ? job.last_error : job.state === 'stopped' ? (job.last_error ?? `stopped at step ${prog.step}: r resumes from the saved state`) : undefined;
  const leftW = wide ? Math.floor(width * 0.6) : width;
  const rightW = width - leftW - 1;
  const labelW = 8;
  const ckLines = wide ? 4 : 2;
  const stateLines = stateLine ? 1 : 0;
  // Every line but the chart's is counted, so the chart takes what is left and nothing is pushed off screen.
  const fixed = 2 + stateLines + 3 + (1 + ckLines) + 1 + 2 + (wide ? 0 : gpuPanelLines(stats, true) + 1);
  const chartH = Math.max(3, height - fixed - logRows);
  const chartW = Math.max(10, leftW - labelW - 1);
  const chart = lineChart(raw, smoothed, chartW, chartH, log);
  const last = m.points[m.points.length - 1];
  const firstStep = m.points[0]?.step ?? 0;
  const stepInfo = prog.steps ? `step ${prog.step}/${prog.steps} ${Math.round(prog.fraction * 100)}%` : 'no steps yet';
  const eta = job.state === 'running' ? ` · ETA ${formatDuration(prog.etaS)}` : job.state === 'finished' ? ' · done' : '';
  const barW = Math.max(10, width - stepInfo.length - eta.length - 4);
  const logLines = view.log.filter((l) => l.trim() !== '');
  const visibleLog = logLines.slice(Math.max(0, logLines.length - logRows - scroll), logLines.length - scroll);
  const host = hostname();

  const chartBox = (
    <Box flexDirection="column" width={leftW}>
      <Text wrap="truncate-end">
        <Text bold>loss</Text><Text dimColor>{` (${log ? 'log' : 'linear'} scale, l toggles) `}</Text>
        <Text color="cyan">⠒ raw</Text><Text> </Text><Text color="yellow">⠒ smoothed</Text>
        <Text>{`  last ${last ? formatValue(last.loss) : '-'} · smoothed ${smoothed.length ? formatValue(smoothed[smoothed.length - 1]!) : '-'}`}</Text>
      </Text>
      {chart.rows.map((segs, i) => (
        <Text key={i} wrap="truncate-end">
          <Text dimColor>{(i === 0 ? formatValue(chart.top) : i === chart.rows.length - 1 ? formatValue(chart.bottom) : '').padStart(labelW - 1)} </Text>
          {segs.map((s, k) => <Text key={k} color={s.series === 'smooth' ? 'yellow' : s.series === 'raw' ? 'cyan' : undefined}>{s.text}</Text>)}
        </Text>
      ))}
      <Text dimColor wrap="truncate-end">{`${' '.repeat(labelW)}step ${firstStep}`.padEnd(labelW + chartW - String(last?.step ?? 0).length - 5)}{`step ${last?.step ?? 0}`}</Text>
      <Text wrap="truncate-end">{`lr ${last ? formatValue(last.lr) : '-'} · ${prog.sPerStep !== null ? `${prog.sPerStep.toFixed(3)} s/step` : '- s/step'} · grad norm ${last?.grad_norm !== undefined ? formatValue(last.grad_norm) : '-'}${last?.preservation_loss !== undefined ? ` · preservation ${formatValue(last.preservation_loss)}` : ''} · epoch ${last?.epoch ?? '-'}${last?.vram_mb ? ` · VRAM ${Math.round(last.vram_mb)} MB` : ''}${last?.rss_mb ? ` · RSS ${Math.round(last.rss_mb)} MB` : ''}`}</Text>
    </Box>
  );

  const ckBox = (w: number, rows: number) => (
    <Box flexDirection="column" width={w}>
      <Text bold wrap="truncate-end">{`Checkpoints (${view.loras.length})`}<Text dimColor>{view.loras.length ? `  scp ${host}:<path>` : ''}</Text></Text>
      {view.loras.length === 0 ? <Text dimColor>none yet</Text> : null}
      {view.loras.slice(-rows).map((f) => (
        <Text key={f.file} wrap="truncate-end">{`${(f.step === null ? 'final' : `step ${f.step}`).padEnd(10)} ${formatBytes(f.bytes).padStart(9)}  ${fitPath(f.file, w - 22)}`}</Text>
      ))}
    </Box>
  );

  const samplesBox = (w: number) => (
    <Box flexDirection="column" width={w}>
      <Text bold wrap="truncate-end">{`Samples (${view.samples.length})`}{sample ? <Text dimColor>{`  step ${sample.step}, prompt ${sample.prompt}  [ ] step  p prompt`}</Text> : null}</Text>
      {sample ? (
        <>
          {wide && thumb?.key === thumbKey ? <Text>{thumb.text}</Text> : null}
          <Text wrap="truncate-end">{fitPath(sample.file, w)}</Text>
        </>
      ) : <Text dimColor wrap="wrap">no samples yet (they appear every sample_every steps, if the job samples)</Text>}
    </Box>
  );

  return (
    <Box flexDirection="column" width={width} height={height}>
      <Text wrap="truncate-end">
        <Text bold color="cyan">{job.name}</Text>
        <Text>{`  job ${job.id} · `}</Text>
        <Text color={stateColor(job.state)} bold>{job.state}</Text>
        <Text>{` · ${m.device ?? (job.gpu !== null ? `gpu ${job.gpu}` : '')} · run ${job.runs}${job.exit_code !== null ? ` · exit ${job.exit_code}` : ''}`}</Text>
        <Text dimColor>{`  ${dir}`}</Text>
      </Text>
      <Text wrap="truncate-end">{`[${bar(prog.fraction, barW)}] ${stepInfo}${eta}`}</Text>
      {stateLine ? <Text color={job.state === 'failed' ? 'red' : 'yellow'} wrap="truncate-end">{stateLine}</Text> : null}
      {wide ? (
        <Box flexDirection="row" width={width}>
          {chartBox}
          <Box width={1} />
          <Box flexDirection="column" width={rightW}>
            <GpuPanel stats={stats} width={rightW} />
            <Text> </Text>
            {samplesBox(rightW)}
          </Box>
        </Box>
      ) : (
        <>
          {chartBox}
          <GpuPanel stats={stats} width={width} compact />
        </>
      )}
      <Box height={1 + ckLines}>{ckBox(width, ckLines)}</Box>
      {wide ? null : <Text dimColor wrap="truncate-end">{view.samples.length ? `samples: ${view.samples.length} (widen the terminal to see them)` : 'samples: no samples yet (they appear every sample_every steps, if the job samples)'}</Text>}
      <Text bold wrap="truncate-end">{`Log `}<Text dimColor>{`${join2(dir, 'log.txt')}${scroll ? `  (scrolled up ${scroll} lines; d scrolls down)` : ''}`}</Text></Text>
      <Box flexDirection="column" height={logRows}>
        {visibleLog.length === 0 ? <Text dimColor>{job.state === 'queued' ? 'waiting in the queue' : 'no log yet'}</Text> : null}
        {visibleLog.map((l, i) => <Text key={i} wrap="truncate-end">{l || ' '}</Text>)}
      </Box>
      <MessageLine level={message?.level} text={message?.text} width={width} />
      <StatusBar hints={[['l', log ? 'linear' : 'log scale'], ['x', 'stop'], ['X', 'force'], ['r', 'resume'], ['u/d', 'log'], ['?', 'help'], ['q', 'back']]} width={width} />
    </Box>
  );
}

/** A path that fits in n columns: its start gives way first, the file name stays. */
export function fitPath(p: string, n: number): string {
  return p.length <= n ? p : `…${p.slice(p.length - Math.max(1, n - 1))}`;
}

function join2(dir: string | undefined, f: string): string {
  return dir ? `${dir}/${f}` : f;
}
