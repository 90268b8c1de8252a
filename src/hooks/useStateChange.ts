// Call back when a job's state moves on (queued -> running -> failed), not when another job is chosen or
// one appears: an answer to an action ("queued job 1 ...") goes once it no longer describes the job.
import { useEffect, useRef } from 'react';

export function useStateChange(job: { id: number; state: string } | undefined, onChange: () => void): void {
  const seen = useRef<{ id: number; state: string } | undefined>(undefined);
  useEffect(() => {
    const before = seen.current;
    seen.current = job ? { id: job.id, state: job.state } : undefined;
    if (before && job && before.id === job.id && before.state !== job.state) onChange();
  }, [job?.id, job?.state]);
}
