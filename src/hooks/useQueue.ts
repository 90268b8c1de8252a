// The queue as the TUI sees it: job rows polled from SQLite (the daemon and other TUIs change them), the
// daemon's status, and actions sent to the daemon. Every open TUI reads the same rows: they show the same state.
import { useCallback, useEffect, useRef, useState } from 'react';
import type { Reply, Request } from '../daemon/socket.js';
import { MetricsReader, progressOf, type Progress } from '../monitor/metrics.js';
import { jobDirOf } from '../queue/queue.js';
import type { JobRow, Store } from '../queue/store.js';
import { join } from 'node:path';

/** How the TUI reaches the daemon; tests pass a stub so no daemon is started. */
export interface DaemonClient {
  ensure(): Promise<Reply>;
  send(req: Request): Promise<Reply>;
}

export interface DaemonStatus {
  state: 'starting' | 'running' | 'unavailable';
  pid?: number;
  slots?: (number | 'cpu')[];
  error?: string;
}

const readers = new Map<string, MetricsReader>();

/** Progress of a job from its metrics.jsonl (read incrementally, shared by every screen). */
export function jobProgress(job: JobRow): Progress {
  const file = join(jobDirOf(job), 'metrics.jsonl');
  let r = readers.get(file);
  if (!r) { r = new MetricsReader(file); readers.set(file, r); }
  return progressOf(r.read());
}

export function useQueue(store: Store, client: DaemonClient | undefined, pollMs = 500) {
  const [jobs, setJobs] = useState<JobRow[]>(() => store.listJobs());
  const [tick, setTick] = useState(0);
  const [daemon, setDaemon] = useState<DaemonStatus>(client ? { state: 'starting' } : { state: 'unavailable', error: 'no daemon in this session' });
  const last = useRef('');

  const refresh = useCallback(() => {
    if (!store.db.open) return; // closed under us (the app is quitting)
    const rows = store.listJobs();
    const sig = JSON.stringify(rows);
    if (sig !== last.current) { last.current = sig; setJobs(rows); }
    // Running jobs' metrics grow without any row changing.
    if (rows.some((j) => j.state === 'running' || j.state === 'stopping')) setTick((t) => t + 1);
  }, [store]);

  useEffect(() => {
    const t = setInterval(refresh, pollMs);
    return () => clearInterval(t);
  }, [refresh, pollMs]);

  const connect = useCallback(async () => {
    if (!client) return;
    try {
      const r = await client.ensure();
      setDaemon({ state: 'running', pid: Number(r.pid), slots: r.slots as (number | 'cpu')[] });
    } catch (err) {
      setDaemon({ state: 'unavailable', error: (err as Error).message });
    }
  }, [client]);

  // Opening the TUI starts the daemon when none runs, which re-adopts jobs left running.
  useEffect(() => { void connect(); }, [connect]);

  const act = useCallback(async (req: Request): Promise<{ ok: boolean; text: string }> => {
    if (!client) return { ok: false, text: 'no queue daemon in this session' };
    try {
      const r = await client.send(req);
      refresh();
      if (daemon.state !== 'running') void connect();
      return { ok: r.ok, text: r.ok ? (r.message ?? 'done') : (r.error ?? 'failed') };
    } catch (err) {
      return { ok: false, text: (err as Error).message };
    }
  }, [client, refresh, daemon.state, connect]);

  return { jobs, daemon, act, refresh, tick };
}

export type QueueState = ReturnType<typeof useQueue>;
