// Job monitor: one job live from its folder: progress and ETA, the loss chart, learning rate and s/step, the
// GPU (or CPU and RAM) panel, samples beside the chart (or behind `s` on a narrow terminal, or large over the
// whole screen with Enter), checkpoints with full paths, and the log.
import { Box, Text, useInput } from 'ink';
import { hostname } from 'node:os';
import { useMemo, useState } from 'react';
import type { Request } from '../src/daemon/socket.js';
import { useJobMonitor, useSystemStats } from '../src/hooks/useJobMonitor.js';
import { useStateChange } from '../src/hooks/useStateChange.js';
import { bar, formatValue } from '../src/monitor/chart.js';
import type { Sample } from '../src/monitor/files.js';
import { formatBytes, formatDuration, progressOf, smooth } from '../src/monitor/metrics.js';
import type { SystemStats } from '../src/monitor/system.js';
import { jobDirOf, slotLabel } from '../src/queue/queue.js';
import type { JobRow } from '../src/queue/store.js';
import { MessageLine, StatusBar, type Hint } from './components/StatusBar.js';
import { GpuPanel, gpuPanelLines } from './monitor/GpuPanel.js';
import { CHART_FRAME_ROWS, LossChartView } from './monitor/LossChartView.js';
import { SampleLarge, SampleSmall } from './monitor/SampleView.js';

export const MONITOR_KEYS: Hint[] = [
  ['l', 'loss chart: linear / log scale'], ['s', 'chart / samples (narrow terminals, where they do not fit side by side)'],
  ['Enter', 'the sample large, over the whole screen (←→ step, ↑↓ prompt, Esc back)'], ['[ ]', 'samples: previous / next step'],
  ['p', 'samples: next prompt'], ['x', 'stop: save a checkpoint, then stop'], ['X', 'force stop (asks)'],
  ['r', 'resume a stopped, failed or extended job'], ['PgUp PgDn u d', 'scroll the log'], ['Esc q', 'back'],
];

const STATE_COLOR: Record<string, string> = { running: 'green', stopping: 'yellow', queued: 'cyan', finished: 'blue', failed: 'red', stopped: 'yellow', draft: 'gray' };

export function stateColor(state: string): string {
  return STATE_COLOR[state] ?? 'white';
}

/** Side by side (chart, and the GPU panel with the samples) from 120 columns and 34 rows of screen. */
export function isWide(width: number, height: number): boolean {
  return width >= 120 && height >= 34;
}

interface Props {
  job: JobRow | undefined;
  active: boolean;
  width: number;
  height: number;
  act: (req: Request) => Promise<{ ok: boolean; text: string }>;
  /** The machine has no GPU: jobs run in the CPU slot. */
  cpuOnly: boolean;
  /** Hold the frame's keys (Esc, q, 1-5) while the sample is open large: they are this view's. */
  setCapture: (capturing: boolean) => void;
  system?: SystemStats;
}

/** Which sample is shown: the newest until the user picks one. */
function pick(samples: Sample[], index: number): number {
  return index < 0 || index >= samples.length ? samples.length - 1 : index;
}

export function Monitor({ job, active, width, height, act, cpuOnly, setCapture, system }: Props) {
  const dir = job ? jobDirOf(job) : undefined;
  const view = useJobMonitor(active ? dir : undefined);
  const stats = useSystemStats(active, system);
  const [log, setLog] = useState(false);
  const [scroll, setScroll] = useState(0);
  const [message, setMessage] = useState<{ level: 'info' | 'error'; text: string } | undefined>();
  const [confirmForce, setConfirmForce] = useState(false);
  const [sampleIdx, setSampleIdx] = useState(-1);
  const [showSamples, setShowSamples] = useState(false);
  const [large, setLargeState] = useState(false);
  const setLarge = (on: boolean) => { setLargeState(on); setCapture(on); };

  // An action's answer stays until the job's state moves on (then the state line says what happened).
  useStateChange(job, () => setMessage(undefined));

  const m = view.metrics;
  const prog = progressOf(m);
  const wide = isWide(width, height);
  const logRows = wide ? Math.max(4, Math.floor(height * 0.18)) : 3;
  const samples = view.samples;
  const cur = pick(samples, sampleIdx);
  const sample = samples[cur];
  const sampleSteps = useMemo(() => [...new Set(samples.map((s) => s.step))], [samples]);

  /** The same prompt at another step (dir -1 / +1), or another prompt at the same step. */
  const walk = (by: 'step' | 'prompt', dir: 1 | -1) => {
    if (samples.length === 0) { setMessage({ level: 'info', text: 'no samples yet' }); return; }
    const s = samples[cur]!;
    const same = samples.map((x, i) => [x, i] as const).filter(([x]) => (by === 'step' ? x.prompt === s.prompt : x.step === s.step));
    const k = same.findIndex(([, i]) => i === cur);
    const next = by === 'step' ? same[Math.max(0, Math.min(same.length - 1, k + dir))]! : same[(k + dir + same.length) % same.length]!;
    setSampleIdx(next[1]);
  };

  useInput((input, key) => {
    if (!job) return;
    if (large) {
      if (key.escape || key.return || input === 'q') setLarge(false);
      else if (key.leftArrow || input === '[' || input === 'h') walk('step', -1);
      else if (key.rightArrow || input === ']' || input === 'l') walk('step', 1);
      else if (key.upArrow || input === 'k') walk('prompt', -1);
      else if (key.downArrow || input === 'j' || input === 'p') walk('prompt', 1);
      return;
    }
    if (confirmForce) {
      setConfirmForce(false);
      if (input === 'y') void act({ op: 'stop', id: job.id, force: true }).then((r) => setMessage({ level: r.ok ? 'info' : 'error', text: r.text }));
      else setMessage({ level: 'info', text: 'not stopped' });
      return;
    }
    setMessage(undefined);
    if (input === 'l') setLog((v) => !v);
    else if (input === 's') setShowSamples((v) => !v);
    else if (key.return) setLarge(true);
    else if (input === 'x') void act({ op: 'stop', id: job.id }).then((r) => setMessage({ level: r.ok ? 'info' : 'error', text: r.text }));
    else if (input === 'X') { setConfirmForce(true); setMessage({ level: 'error', text: `Force-stop job ${job.id} now, without saving? y: yes · other: no` }); }
    else if (input === 'r') void act({ op: 'resume', id: job.id }).then((r) => setMessage({ level: r.ok ? 'info' : 'error', text: r.text }));
    else if (key.pageUp || input === 'u') setScroll((s) => Math.min(Math.max(0, view.log.filter((l) => l.trim() !== '').length - logRows), s + logRows));
    else if (key.pageDown || input === 'd') setScroll((s) => Math.max(0, s - logRows));
    else if (input === '[' || input === ']') walk('step', input === ']' ? 1 : -1);
    else if (input === 'p') walk('prompt', 1);
  }, { isActive: active });

  const steps = useMemo(() => m.points.map((p) => p.step), [m]);
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

  const sampleProps = { sample, info: sample ? view.prompts[sample.prompt] : undefined, prompts: view.prompts.length, steps: sampleSteps };
  if (large) return <SampleLarge {...sampleProps} width={width} height={height} />;

  // A failed job's reason in full, wrapped (at most three rows; the log has the rest).
  const stateText = job.state === 'failed' && job.last_error ? `failed: ${job.last_error}`
    : job.state === 'stopped' ? (job.last_error ?? `stopped at step ${prog.step}: r resumes from the saved state`) : undefined;
  const stateRows = stateText ? Math.min(3, Math.ceil(stateText.length / width)) : 0;
  const leftW = wide ? Math.floor(width * 0.6) : width;
  const rightW = width - leftW - 1;
  const ckLines = wide ? 4 : 2;
  const narrowSampleLine = wide ? 0 : 1;
  // Every row but the chart's is counted, so the chart takes what is left and nothing is pushed off screen.
  const fixed = 2 + stateRows + CHART_FRAME_ROWS + 1 + (1 + ckLines) + narrowSampleLine + 1 + 2 + (wide ? 0 : gpuPanelLines(stats, true));
  const chartH = Math.max(3, height - fixed - logRows);
  const last = m.points[m.points.length - 1];
  const stepInfo = prog.steps ? `step ${prog.step}/${prog.steps} ${Math.round(prog.fraction * 100)}%` : 'no steps yet';
  const eta = job.state === 'running' ? ` · ETA ${formatDuration(prog.etaS)}` : job.state === 'finished' ? ' · done' : '';
  const barW = Math.max(10, width - stepInfo.length - eta.length - 4);
  const logLines = view.log.filter((l) => l.trim() !== '');
  const visibleLog = logLines.slice(Math.max(0, logLines.length - logRows - scroll), logLines.length - scroll);
  const host = hostname();
  const where = m.device ?? slotLabel(job.gpu, cpuOnly);

  const stats1 = `lr ${last ? formatValue(last.lr) : '-'} · ${prog.sPerStep !== null ? `${prog.sPerStep.toFixed(3)} s/step` : '- s/step'} · grad norm ${last?.grad_norm !== undefined ? formatValue(last.grad_norm) : '-'}${last?.preservation_loss !== undefined ? ` · preservation ${formatValue(last.preservation_loss)}` : ''} · epoch ${last?.epoch ?? '-'}${last?.vram_mb ? ` · VRAM ${Math.round(last.vram_mb)} MB` : ''}${last?.rss_mb ? ` · RSS ${Math.round(last.rss_mb)} MB` : ''}${m.plan ? ` (planned ${Math.round(m.plan.total / 2 ** 20)} MB)` : ''}`;
  const chartBox = (w: number) => (
    <Box flexDirection="column" width={w}>
      {!wide && showSamples
        ? <SampleSmall {...sampleProps} width={w} height={chartH + CHART_FRAME_ROWS} />
        : <LossChartView steps={steps} raw={raw} smooth={smoothed} total={prog.steps} log={log} width={w} height={chartH} />}
      <Text wrap="truncate-end">{stats1}</Text>
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

  const rightH = chartH + CHART_FRAME_ROWS + 1;
  const gpuH = gpuPanelLines(stats, false);
  return (
    <Box flexDirection="column" width={width} height={height}>
      <Text wrap="truncate-end">
        <Text bold color="cyan">{job.name}</Text>
        <Text>{`  job ${job.id} · `}</Text>
        <Text color={stateColor(job.state)} bold>{job.state}</Text>
        <Text>{` · ${where} · run ${job.runs}${job.exit_code !== null ? ` · exit ${job.exit_code}` : ''}`}</Text>
        <Text dimColor>{`  ${dir}`}</Text>
      </Text>
      <Text wrap="truncate-end">{`[${bar(prog.fraction, barW)}] ${stepInfo}${eta}`}</Text>
      {stateText ? <Box height={stateRows} width={width} overflow="hidden"><Text color={job.state === 'failed' ? 'red' : 'yellow'} wrap="wrap">{stateText}</Text></Box> : null}
      {wide ? (
        <Box flexDirection="row" width={width} height={rightH}>
          {chartBox(leftW)}
          <Box width={1} />
          <Box flexDirection="column" width={rightW}>
            <GpuPanel stats={stats} width={rightW} />
            <Text> </Text>
            <Text bold wrap="truncate-end">{`Samples (${samples.length})`}</Text>
            <SampleSmall {...sampleProps} width={rightW} height={Math.max(4, rightH - gpuH - 2)} />
          </Box>
        </Box>
      ) : (
        <>
          {chartBox(width)}
          <GpuPanel stats={stats} width={width} compact />
        </>
      )}
      <Box height={1 + ckLines}>{ckBox(width, ckLines)}</Box>
      {wide ? null : <Text dimColor wrap="truncate-end">{samples.length ? `samples: ${samples.length} · s ${showSamples ? 'back to the chart' : 'shows them here'} · Enter large` : 'samples: none yet (they appear every sample_every steps, if the job samples)'}</Text>}
      <Text bold wrap="truncate-end">{'Log '}<Text dimColor>{`${dir}/log.txt${scroll ? `  (scrolled up ${scroll} lines; d scrolls down)` : ''}`}</Text></Text>
      <Box flexDirection="column" height={logRows}>
        {visibleLog.length === 0 ? <Text dimColor>{job.state === 'queued' ? 'waiting in the queue' : 'no log yet'}</Text> : null}
        {visibleLog.map((l, i) => <Text key={i} wrap="truncate-end">{l || ' '}</Text>)}
      </Box>
      <MessageLine level={message?.level} text={message?.text} width={width} />
      <StatusBar hints={[['l', log ? 'linear' : 'log scale'], ...(wide ? [] : [['s', showSamples ? 'chart' : 'samples'] as Hint]), ['Enter', 'sample'], ['x', 'stop'], ['r', 'resume'], ['u/d', 'log'], ['?', 'help'], ['q', 'back']]} width={width} />
    </Box>
  );
}

/** A path that fits in n columns: its start gives way first, the file name stays. */
export function fitPath(p: string, n: number): string {
  return p.length <= n ? p : `…${p.slice(p.length - Math.max(1, n - 1))}`;
}
