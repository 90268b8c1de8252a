// The frame: a tab bar, the current screen, and the keys that work everywhere.
import { Box, Text, useApp, useInput } from 'ink';
import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import type { NamedDataset } from '../src/config/fields.js';
import type { Loaded } from '../src/config/jobfile.js';
import { probeGpus, type Gpu } from '../src/gpu.js';
import { useDatasets } from '../src/hooks/useDatasets.js';
import { useJobForm } from '../src/hooks/useJobForm.js';
import { useKeyState } from '../src/hooks/useKeyState.js';
import { useTerminalSize, type TermSize } from '../src/hooks/useTerminalSize.js';
import type { Preset } from '../src/presets.js';
import { useQueue, type DaemonClient } from '../src/hooks/useQueue.js';
import type { SystemStats } from '../src/monitor/system.js';
import { trains } from '../src/config/support.js';
import { jobFamily } from '../src/queue/family.js';
import type { JobRow, Store } from '../src/queue/store.js';
import { Dashboard, DASHBOARD_KEYS } from './Dashboard.js';
import { Monitor, MONITOR_KEYS } from './Monitor.js';
import { Datasets, DATASETS_KEYS } from './Datasets.js';
import { Help } from './Help.js';
import { NEW_JOB_KEYS, NewJob } from './NewJob.js';
import { Queue, QUEUE_KEYS } from './Queue.js';

export type ScreenId = 'dashboard' | 'new' | 'queue' | 'datasets' | 'job';
const SCREENS: { id: ScreenId; key: string; title: string }[] = [
  { id: 'dashboard', key: '1', title: 'Dashboard' },
  { id: 'new', key: '2', title: 'New Job' },
  { id: 'queue', key: '3', title: 'Training Queue' },
  { id: 'datasets', key: '4', title: 'Datasets' },
  { id: 'job', key: '5', title: 'Job' },
];

export interface AppProps {
  store: Store;
  presets: Preset[];
  initial?: Loaded;
  initialScreen?: ScreenId;
  /** GPUs to assume (tests); probed with nvidia-smi when absent. */
  gpus?: Gpu[];
  /** Fixed size (tests); the terminal's live size when absent. */
  size?: TermSize;
  /** The queue daemon; without one (tests) the queue is read-only and says so. */
  daemon?: DaemonClient;
  /** Machine stats to show instead of polling nvidia-smi (tests). */
  system?: SystemStats;
  /** The job the Job screen opens on. */
  initialJob?: number;
}

export function App(props: AppProps) {
  const { store, presets } = props;
  const { exit } = useApp();
  const size = useTerminalSize(props.size);
  const [screen, setScreen] = useState<ScreenId>(props.initialScreen ?? (props.initial ? 'new' : 'dashboard'));
  const [, setCapture, capturing] = useKeyState(false);
  const [help, setHelp] = useState(false);
  // Quitting while New Job holds unsaved edits asks first; a second Ctrl+C quits anyway.
  const [confirmQuit, setConfirmQuit, confirmingQuit] = useKeyState(false);
  const captureBeforeQuit = useRef(false);
  const [gpus, setGpus] = useState<Gpu[] | undefined>(props.gpus);
  const queue = useQueue(store, props.daemon);
  const jobs = queue.jobs;
  const [monitorId, setMonitorId] = useState<number | undefined>(props.initialJob);

  useEffect(() => {
    if (props.gpus) return undefined;
    let live = true;
    void probeGpus().then((g) => { if (live) setGpus(g); });
    return () => { live = false; };
  }, []);

  const ds = useDatasets(store);
  const named: NamedDataset[] = useMemo(() => ds.list.map((d) => ({ name: d.name, folder: d.folder, isReg: d.is_reg })), [ds.list]);
  const refreshJobs = useCallback(() => queue.refresh(), [queue.refresh]);
  const form = useJobForm({ presets, store, initial: props.initial, gpus, datasets: named, onSaved: refreshJobs });

  // Switching screens clears any capture the old screen held (it no longer renders its input).
  const go = (id: ScreenId) => { setCapture(false); setScreen(id); };
  const openJob = (job: JobRow) => { setMonitorId(job.id); go('job'); };
  // The Job screen without a chosen job shows the running one, else the newest that ran.
  const monitored: JobRow | undefined = jobs.find((j) => j.id === monitorId)
    ?? jobs.find((j) => j.state === 'running' || j.state === 'stopping')
    ?? [...jobs].filter((j) => j.state !== 'draft').sort((a, b) => (b.started_at ?? '').localeCompare(a.started_at ?? ''))[0];

  const quit = () => {
    if (!form.dirty) return exit();
    captureBeforeQuit.current = capturing();
    setCapture(true);
    setConfirmQuit(true);
    return undefined;
  };

  useInput((input, key) => {
    if (confirmingQuit()) {
      setConfirmQuit(false);
      setCapture(captureBeforeQuit.current); // an input that was open stays open
      if (input === 'y' || (key.ctrl && input === 'c')) exit();
      else if (input === 's') { if (form.save()) exit(); else go('new'); }
      return;
    }
    if (key.ctrl && input === 'c') { quit(); return; }
    if (help) { setHelp(false); return; }
    if (capturing()) return;
    if (input === '?') { setHelp(true); return; }
    const target = SCREENS.find((s) => s.key === input);
    if (target) { go(target.id); return; }
    if (key.escape || input === 'q') {
      if (screen === 'dashboard') quit();
      else go('dashboard');
    }
  });

  const overlaid = help || confirmQuit;
  // No GPU: the daemon runs one CPU slot (or, before it answers, nvidia-smi found none).
  const cpuOnly = queue.daemon.slots ? queue.daemon.slots[0] === 'cpu' : gpus !== undefined && gpus.length === 0;
  const width = size.columns;
  const bodyH = Math.max(6, size.rows - 1);
  const keys = screen === 'new' ? NEW_JOB_KEYS : screen === 'datasets' ? DATASETS_KEYS : screen === 'queue' ? QUEUE_KEYS : screen === 'job' ? MONITOR_KEYS : DASHBOARD_KEYS;
  const title = SCREENS.find((s) => s.id === screen)!.title;
  // The family of the job this screen is about: New Job's, the monitored job's; none on the lists.
  const family = screen === 'new' ? form.preset : screen === 'job' && monitored ? jobFamily(monitored, presets) : undefined;

  return (
    <Box flexDirection="column" width={width} height={size.rows}>
      <Box height={1} width={width}>
        <Text wrap="truncate-end">
          <Text bold color="cyan"> graft </Text>
          {SCREENS.map((s) => (
            <Text key={s.id}>
              <Text dimColor>│</Text>
              {s.id === screen ? <Text inverse bold>{` ${s.key} ${s.title} `}</Text> : <Text>{` ${s.key} ${s.title} `}</Text>}
            </Text>
          ))}
          <Text dimColor>│</Text>
          {width >= 100 && family ? <Text dimColor>{` ${family.label} · ${trains(family) ? 'graft trains it' : 'not supported yet'}`}</Text> : null}
        </Text>
      </Box>
      {help ? <Help title={title} keys={keys} width={width} height={bodyH} /> : null}
      {confirmQuit ? <QuitPrompt source={form.source} width={width} height={bodyH} /> : null}
      <Box display={overlaid ? 'none' : 'flex'} flexDirection="column" width={width} height={bodyH}>
        <Dashboard jobs={jobs} datasets={ds.list.length} gpus={gpus} daemon={queue.daemon} home={store.home} width={width} height={bodyH} active={screen === 'dashboard' && !overlaid} cpuOnly={cpuOnly} onOpen={openJob} />
        <NewJob form={form} active={screen === 'new' && !overlaid} width={width} height={bodyH} setCapture={setCapture} />
        <Queue
          jobs={jobs}
          daemon={queue.daemon}
          act={queue.act}
          active={screen === 'queue' && !overlaid}
          cpuOnly={cpuOnly}
          width={width}
          height={bodyH}
          setCapture={setCapture}
          onOpen={openJob}
          onEdit={(job) => {
            try {
              form.load(job.config_path);
              go('new');
            } catch { /* load reports its own errors in the form */ }
          }}
        />
        <Monitor job={monitored} active={screen === 'job' && !overlaid} width={width} height={bodyH} act={queue.act} cpuOnly={cpuOnly} setCapture={setCapture} system={props.system} />
        <Datasets ds={ds} presets={presets} active={screen === 'datasets' && !overlaid} width={width} height={bodyH} setCapture={setCapture} />
      </Box>
    </Box>
  );
}


function QuitPrompt({ source, width, height }: { source: string | undefined; width: number; height: number }) {
  return (
    <Box flexDirection="column" width={width} height={height} borderStyle="round" borderColor="yellow" paddingX={1}>
      <Text bold color="yellow">New Job has unsaved edits{source ? ` (${source})` : ''}.</Text>
      <Text>y: quit without saving · s: save config.yaml, then quit · any other key: stay</Text>
    </Box>
  );
}
