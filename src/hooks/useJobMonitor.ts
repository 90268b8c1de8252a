// Everything the Job monitor shows about one job, polled from its folder: metrics, LoRA files, samples, log.
import { join } from 'node:path';
import { useEffect, useRef, useState } from 'react';
import { jobName, logTail, loraFiles, sampleFiles, samplePrompts, type LoraFile, type Sample, type SamplePromptInfo } from '../monitor/files.js';
import { MetricsReader, emptyMetrics, type JobMetrics } from '../monitor/metrics.js';
import { querySystem, type SystemStats } from '../monitor/system.js';

export interface JobView {
  metrics: JobMetrics;
  loras: LoraFile[];
  samples: Sample[];
  /** Prompt, seed and size of each sample prompt (job.json). */
  prompts: SamplePromptInfo[];
  log: string[];
}

export function useJobMonitor(jobDir: string | undefined, pollMs = 500): JobView {
  const [view, setView] = useState<JobView>({ metrics: emptyMetrics(), loras: [], samples: [], prompts: [], log: [] });
  const sig = useRef('');
  useEffect(() => {
    if (!jobDir) return undefined;
    const reader = new MetricsReader(join(jobDir, 'metrics.jsonl'));
    const name = jobName(jobDir);
    sig.current = '';
    const poll = () => {
      const metrics = reader.read();
      const loras = loraFiles(jobDir, name);
      const samples = sampleFiles(jobDir);
      const log = logTail(join(jobDir, 'log.txt'));
      const s = `${metrics.points.length}:${metrics.end?.status}:${metrics.runs}:${JSON.stringify(loras)}:${samples.length}:${log.length}:${log[log.length - 1]}`;
      // job.json is rewritten by each preparation: read again when a run starts.
      if (s !== sig.current) { sig.current = s; setView({ metrics, loras, samples, prompts: samplePrompts(jobDir), log }); }
    };
    poll();
    const t = setInterval(poll, pollMs);
    return () => clearInterval(t);
  }, [jobDir, pollMs]);
  return view;
}

/** Machine stats once a second while active. */
export function useSystemStats(active: boolean, override?: SystemStats): SystemStats | undefined {
  const [stats, setStats] = useState<SystemStats | undefined>(override);
  useEffect(() => {
    if (!active || override) return undefined;
    let live = true;
    let busy = false;
    const poll = () => {
      if (busy) return;
      busy = true;
      void querySystem().then((s) => { if (live) setStats(s); }).finally(() => { busy = false; });
    };
    poll();
    const t = setInterval(poll, 1000);
    return () => { live = false; clearInterval(t); };
  }, [active, override]);
  return override ?? stats;
}
