// The memory a job being edited will need, from the trainer's own plan (`graft-trainer memory-plan`,
// trainer-cuda/train/memory_plan.h): the same numbers the trainer prints, and stops on, before step 1.
// The form's settings become the command's options; families the trainer does not run get no estimate.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { trainerPath } from '../daemon/stages.js';
import { formatBytes } from '../monitor/metrics.js';
import { packageRoot } from '../paths.js';
import { familyFor, type Preset } from '../presets.js';
import { at, resolveSettings } from '../prepare/settings.js';
import { getAt, isPlainObject } from '../util/objpath.js';
import { PROC, procPath, type JobDoc } from './document.js';
import { trainerFormat } from './quantization.js';
import { trains } from './support.js';

export interface PlanLine { what: string; bytes: number }

export interface MemoryPlan {
  training: PlanLine[];
  encoding: PlanLine[];
  training_total: number;
  encoding_total: number;
  total: number;
  /** Free memory of the device; 0 when unknown (a CUDA plan on a machine without a GPU). */
  available: number;
  fits: boolean;
  activations_other: number;
  fixes: string[];
}

/** The model the plan reads: a local folder or file as the user named it, else FLUX.1's or Z-Image's shapes by name. */
function planModel(nameOrPath: string, family: string): string | undefined {
  const candidates = isAbsolute(nameOrPath) ? [nameOrPath] : [resolve(nameOrPath), join(packageRoot(), nameOrPath)];
  const local = candidates.find((p) => nameOrPath !== '' && existsSync(p));
  if (local) return local;
  if (family === 'flux1') return /schnell/i.test(nameOrPath) ? 'schnell' : 'dev';
  if (family === 'zimage' || family === 'zimage_turbo') return 'zimage';
  return undefined;
}

/** `graft-trainer memory-plan` options for the job as it would run, or why there is no estimate. */
export function memoryPlanArgs(doc: JobDoc, presets: Preset[]): { args: string[] } | { none: string } {
  const preset = familyFor(getAt(doc, procPath('model')), presets);
  if (!trains(preset)) return { none: `no estimate: graft's trainer does not train ${preset?.label ?? 'this family'} yet` };
  const proc = getAt(doc, PROC);
  const s = resolveSettings(isPlainObject(proc) ? proc : {}, preset);
  const p = s.process;
  const model = planModel(String(at(p, 'model', 'name_or_path') ?? preset!.name_or_path ?? ''), preset!.family);
  if (!model) return { none: 'no estimate: the model is neither a local folder nor a known Hub model' };
  const device = String(at(p, 'device') ?? 'cpu');
  const args = ['memory-plan', '--model', model, '--device', device.startsWith('cuda') ? device : 'cpu'];
  const fmt = (qKey: string, tKey: string) => (at(p, 'model', qKey) === true ? trainerFormat(String(at(p, 'model', tKey) ?? 'qfloat8')).format : 'none');
  args.push('--quantize', fmt('quantize', 'qtype'), '--quantize-te', fmt('quantize_te', 'qtype_te'));
  const network = String(at(p, 'network', 'type') ?? 'lora');
  args.push('--network', network === 'lokr' ? 'lokr' : 'lora', '--rank', String(Number(at(p, 'network', 'linear')) || 16));
  if (network === 'lokr') {
    args.push('--lokr-factor', String(Number(at(p, 'network', 'lokr_factor')) || -1));
    if (at(p, 'network', 'lokr_full_rank') === true) args.push('--lokr-full-rank');
  }
  args.push('--optimizer', String(at(p, 'train', 'optimizer') ?? 'adamw'));
  args.push('--batch', String(Math.max(1, Number(at(p, 'train', 'batch_size')) || 1)));
  const sides = s.datasets.flatMap((d) => { const r = d.resolution; return Array.isArray(r) ? r : [r]; }).map(Number).filter((n) => n > 0);
  args.push('--resolution', String(sides.length ? Math.max(...sides) : 1024));
  if (at(p, 'train', 'gradient_checkpointing') === true) args.push('--checkpointing');
  if (at(p, 'model', 'layer_offloading') === true) args.push('--offload', String(Number(at(p, 'model', 'layer_offloading_transformer_percent') ?? 1)));
  const ema = at(p, 'train', 'ema_config');
  if (isPlainObject(ema) && ema.use_ema === true) args.push('--ema');
  if (at(p, 'train', 'disable_sampling') !== true) args.push('--sample');
  return { args };
}

/** Runs the trainer's plan. Rejects with the trainer's own message when it refuses the settings. */
export function runMemoryPlan(args: string[], env: NodeJS.ProcessEnv = process.env, timeoutMs = 20000): Promise<MemoryPlan> {
  return new Promise((resolveP, reject) => {
    execFile(trainerPath(env), args, { timeout: timeoutMs, env }, (err, stdout, stderr) => {
      if (err) return reject(new Error((stderr || err.message).trim().split('\n').pop() ?? 'memory-plan failed'));
      try {
        resolveP(JSON.parse(stdout) as MemoryPlan);
      } catch {
        reject(new Error(`memory-plan printed no plan: ${stdout.slice(0, 200)}`));
      }
    });
  });
}

/** One line for the form: the peak, what it is made of, and against what is free. */
export function planSummary(plan: MemoryPlan): string {
  const part = (re: RegExp) => plan.training.filter((l) => re.test(l.what)).reduce((s, l) => s + l.bytes, 0);
  const weights = part(/^(transformer|layer offloading)/), adapters = part(/^(LoRA|LoKr|optimizer)/), acts = part(/^(activations|backward)/);
  const free = plan.available > 0 ? ` of ${formatBytes(plan.available)} free` : '';
  const peak = plan.encoding_total > plan.training_total ? ' (peak while encoding captions)' : '';
  return `needs ~${formatBytes(plan.total)}${free}${peak}: weights ${formatBytes(weights)}, adapter+optimizer ${formatBytes(adapters)}, activations ${formatBytes(acts)}` +
    (plan.fits ? '' : `; does not fit${plan.fixes.length ? ` — would with ${plan.fixes[0]}` : ''}`);
}
