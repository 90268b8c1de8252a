// Advice shown in the form (SPEC.md section 4): things that run but are probably not what the user wants.
import type { Gpu } from '../gpu.js';
import { familyGuess, type Preset } from '../presets.js';
import { formatPath, getAt, isPlainObject } from '../util/objpath.js';
import { procPath, type JobDoc } from './document.js';
import { ignoredSettings } from './support.js';
import { effective, type Issue } from './validate.js';

export interface WarningContext {
  preset: Preset | undefined;
  /** Every preset, to tell which family a config without model.arch means. */
  presets: Preset[];
  /** GPUs found on this machine; undefined while probing or when unknown. */
  gpus?: Gpu[];
  /** Number of images/clips per dataset folder, as far as counted; -1 when the folder cannot be read. */
  datasetSizes?: Record<string, number>;
}

const P = (...rest: (string | number)[]) => formatPath(procPath(...rest));
const warn = (rule: string, path: string, message: string): Issue => ({ level: 'warning', rule, path, message });

export function gpuIndexOf(device: unknown): number {
  const m = typeof device === 'string' ? /^cuda:(\d+)$/.exec(device) : null;
  return m ? Number(m[1]) : 0;
}

function resolutionsOf(block: Record<string, unknown>): number[] {
  const r = block.resolution;
  if (typeof r === 'number') return [r];
  if (Array.isArray(r)) return r.filter((x): x is number => typeof x === 'number');
  return [512, 768, 1024];
}

export function jobWarnings(doc: JobDoc, ctx: WarningContext): Issue[] {
  const out: Issue[] = [];
  const { preset, presets } = ctx;
  const datasets = (() => {
    const d = getAt(doc, procPath('datasets'));
    return Array.isArray(d) ? d.filter(isPlainObject) : [];
  })();

  const guess = familyGuess(getAt(doc, procPath('model')), presets);
  if (guess && preset) {
    out.push(warn('arch-guessed', P('model', 'arch'), guess === 'name_or_path'
      ? `model.arch is missing: taken as ${preset.label} from name_or_path; set model.arch: ${preset.arch} to say so`
      : `model.arch is missing and no legacy flag says the family: taken as ${preset.label}, as the reference toolkit does (its default arch is sd1); set model.arch`));
  }
  out.push(...ignoredSettings(doc, presets));

  const saveEvery = effective(doc, 'save', 'save_every');
  const sampleEvery = effective(doc, 'sample', 'sample_every');
  if (effective(doc, 'train', 'disable_sampling') !== true && typeof saveEvery === 'number' && typeof sampleEvery === 'number' && saveEvery !== sampleEvery) {
    out.push({ ...warn('save-every-vs-sample-every', P('save', 'save_every'),
      `Save Every (${saveEvery}) differs from Sample Every (${sampleEvery}): some checkpoints will have no samples to judge them by.`), also: [P('sample', 'sample_every')] });
  }

  datasets.forEach((d, i) => {
    const n = typeof d.folder_path === 'string' ? ctx.datasetSizes?.[d.folder_path] : undefined;
    if (n === -1) out.push(warn('dataset-folder', P('datasets', i, 'folder_path'), `Target Dataset ${String(d.folder_path)}: no such folder (the queue refuses the job until it exists)`));
    else if (n === 0) out.push(warn('dataset-folder', P('datasets', i, 'folder_path'), `Target Dataset ${String(d.folder_path)}: no images in it (the queue refuses the job)`));
  });

  const batch = effective(doc, 'train', 'batch_size');
  const accum = getAt(doc, procPath('train', 'gradient_accumulation')) ?? getAt(doc, procPath('train', 'gradient_accumulation_steps')) ?? 1;
  if (typeof batch === 'number' && typeof accum === 'number' && ctx.datasetSizes) {
    const total = datasets.reduce((n, d) => {
      const size = typeof d.folder_path === 'string' ? ctx.datasetSizes![d.folder_path] : undefined;
      return size === undefined || size < 0 ? n : n + size * (typeof d.num_repeats === 'number' ? d.num_repeats : 1);
    }, 0);
    const known = datasets.some((d) => typeof d.folder_path === 'string' && (ctx.datasetSizes![d.folder_path] ?? -1) >= 0);
    if (known && batch * accum > total) {
      out.push({ ...warn('effective-batch-exceeds-dataset', P('train', 'batch_size'),
        `Effective batch ${batch} x ${accum} = ${batch * accum} is larger than the dataset (${total} items): every step repeats images.`), also: [P('train', 'gradient_accumulation')] });
    }
  }

  if (effective(doc, 'train', 'diff_output_preservation') === true) {
    const trigger = getAt(doc, procPath('trigger_word'));
    const hasTrigger = typeof trigger === 'string' && trigger.trim() !== '';
    const hasReg = datasets.some((d) => d.is_reg === true);
    if (!hasTrigger || !hasReg) {
      const missing = [!hasTrigger ? 'a Trigger Word (DOP replaces it with the Preservation Class)' : '', !hasReg ? 'a regularization dataset' : ''].filter(Boolean).join(' and ');
      out.push({ ...warn('dop-without-reg-or-trigger', P('train', 'diff_output_preservation'), `Differential Output Preservation without ${missing}.`), also: [P('trigger_word')] });
    }
  }

  const rank = effective(doc, 'network', 'linear');
  if (typeof rank === 'number' && rank > 64) {
    out.push(warn('rank-above-64', P('network', 'linear'), `Linear Rank ${rank} is above 64: larger files, more VRAM, and easier overfitting; 16-32 suits most subjects and styles.`));
  }

  const device = effective(doc, 'device');
  if (ctx.gpus && typeof device === 'string' && /^cuda(:\d+)?$/.test(device) && !ctx.gpus.some((g) => g.index === gpuIndexOf(device))) {
    out.push(warn('no-such-gpu', P('device'), ctx.gpus.length === 0
      ? `GPU ${gpuIndexOf(device)}: this machine has no GPU; the queue refuses ${device} here (set GPU ID to cpu)`
      : `GPU ${gpuIndexOf(device)}: not on this machine (it has GPU ${ctx.gpus.map((g) => g.index).join(', ')}); the queue refuses it`));
  }

  if (preset && device === 'cpu' && preset.vram.min_gb >= 12) {
    // It runs (the CPU backend is the same model definition), but a real model's step takes minutes there.
    out.push(warn('real-model-on-cpu', P('device'), `${preset.label} on the CPU: each step at ${preset.vram.max_resolution_at_min} px takes minutes and tens of GB of memory; set GPU ID to a GPU.`));
  }

  if (preset && ctx.gpus) {
    const index = gpuIndexOf(effective(doc, 'device'));
    const gpu = ctx.gpus.find((g) => g.index === index);
    if (gpu) {
      const gb = Math.round(gpu.memoryMb / 1024);
      if (gb < preset.vram.min_gb) {
        out.push(warn('vram-below-minimum', P('device'), `${preset.label} needs about ${preset.vram.min_gb} GB (guide: ${preset.vram.guide}); GPU ${index} (${gpu.name}) has ${gb} GB.`));
      } else if (gb < preset.vram.comfortable_gb) {
        datasets.forEach((d, i) => {
          const tooBig = resolutionsOf(d).filter((r) => r > preset.vram.max_resolution_at_min);
          if (tooBig.length > 0) {
            out.push(warn('resolution-vs-vram', P('datasets', i, 'resolution'),
              `Resolution ${tooBig.join(', ')} may not fit on GPU ${index} (${gb} GB): the ${preset.label} guide (${preset.vram.guide}) fits up to ${preset.vram.max_resolution_at_min} px near ${preset.vram.min_gb} GB.`));
          }
        });
      }
    }
  }

  if (preset?.panels.control && preset.group === 'edit') {
    datasets.forEach((d, i) => {
      if (d.is_reg !== true && (d.control_path === undefined || d.control_path === null || d.control_path === '')) {
        out.push(warn('edit-without-control', P('datasets', i, 'control_path'), `${preset.label} learns edits from pairs: set a Control Dataset (the "before" images) for dataset ${i + 1}.`));
      }
    });
  }
  return out;
}
