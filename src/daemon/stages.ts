// What running a job means, stage by stage. Today one stage: the trainer on a prepared job folder.
// Dataset preparation (config.yaml -> prepared/, cache/, job.json) slots in as a 'prepare' stage before it.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';
import { prepareNotBuilt } from '../queue/queue.js';

export interface Stage {
  name: 'prepare' | 'train';
  file: string;
  args: string[];
}

/** The compiled trainer: $GRAFT_TRAINER, else the one `make trainer` builds in this checkout. */
export function trainerPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.GRAFT_TRAINER && env.GRAFT_TRAINER.trim() !== '' ? env.GRAFT_TRAINER : join(packageRoot(), 'trainer-cuda', 'build', 'graft-trainer');
}

/** The stages a job folder needs, or why it cannot run. */
export function planStages(jobDir: string, env: NodeJS.ProcessEnv = process.env): { stages: Stage[] } | { error: string } {
  if (!existsSync(jobDir)) return { error: `job folder not found: ${jobDir}` };
  if (!existsSync(join(jobDir, 'job.json'))) return { error: prepareNotBuilt(jobDir) };
  const trainer = trainerPath(env);
  if (!existsSync(trainer)) return { error: `the trainer is not built: ${trainer} is missing (run make trainer, or set GRAFT_TRAINER)` };
  return { stages: [{ name: 'train', file: trainer, args: ['train', jobDir] }] };
}
