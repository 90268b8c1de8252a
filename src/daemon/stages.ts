// What running a job means, stage by stage: preparation (config.yaml -> prepared/ and job.json, by graft's
// own CLI) when the job folder has a config.yaml, then the trainer on the prepared job folder. Preparation
// runs again on every run and resume: it reuses what is prepared, and picks up a changed dataset.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';
import { cliPath } from './client.js';

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
  const config = join(jobDir, 'config.yaml');
  const prepare = existsSync(config);
  if (!prepare && !existsSync(join(jobDir, 'job.json'))) return { error: `${jobDir} has neither config.yaml nor job.json: not a job folder` };
  const trainer = trainerPath(env);
  if (!existsSync(trainer)) return { error: `the trainer is not built: ${trainer} is missing (run make trainer, or set GRAFT_TRAINER)` };
  const stages: Stage[] = [];
  if (prepare) {
    const cli = cliPath(env);
    if (!existsSync(cli)) return { error: `graft is not built: ${cli} is missing (npx tsc -p tsconfig.json)` };
    stages.push({ name: 'prepare', file: process.execPath, args: [cli, 'prepare', jobDir] });
  }
  stages.push({ name: 'train', file: trainer, args: ['train', jobDir] });
  return { stages };
}
