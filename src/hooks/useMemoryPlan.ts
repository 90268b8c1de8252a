// The trainer's memory plan for the job being edited, asked again a moment after the settings it
// depends on stop changing (config/memoryPlan.ts). No rendering here.
import { useEffect, useMemo, useState } from 'react';
import type { JobDoc } from '../config/document.js';
import { memoryPlanArgs, runMemoryPlan, type MemoryPlan } from '../config/memoryPlan.js';
import type { Preset } from '../presets.js';

export type PlanState = { plan: MemoryPlan } | { none: string } | { error: string } | { pending: true };

export function useMemoryPlan(doc: JobDoc, presets: Preset[], delayMs = 400): PlanState {
  const request = useMemo(() => memoryPlanArgs(doc, presets), [doc, presets]);
  const key = 'args' in request ? request.args.join('\u0000') : '';
  const [state, setState] = useState<PlanState>({ pending: true });
  useEffect(() => {
    if (!('args' in request)) {
      setState({ none: request.none });
      return undefined;
    }
    let live = true;
    const timer = setTimeout(() => {
      runMemoryPlan(request.args)
        .then((plan) => { if (live) setState({ plan }); })
        .catch((e: Error) => { if (live) setState({ error: e.message }); });
    }, delayMs);
    return () => { live = false; clearTimeout(timer); };
  }, [key]);  // the arguments, not the document object, decide whether to ask again
  return state;
}
