// The New Job form: every panel and field of SPEC.md section 4, each bound to its place in the YAML.
// Screens render these; they never reach into the document themselves.
import { familyFor, presetById, type Preset } from '../presets.js';
import { formatPath, getAt, isPlainObject, setAt } from '../util/objpath.js';
import { ALL_RESOLUTIONS, applyPreset, newDatasetBlock, procPath, type JobDoc } from './document.js';
import { CAPTION_EXTS, LR_SCHEDULERS, OPTIMIZERS, SAMPLERS, TIMESTEP_TYPES } from './schema.js';
import { FLUX_DEFAULT_EXTRAS } from '../prepare/fluxTokenizers.js';
import { trains } from './support.js';
import { effective, type Issue } from './validate.js';
import { gpuIndexOf } from './warnings.js';

export type PanelId = 'job' | 'model' | 'quantization' | 'multistage' | 'target' | 'save' | 'training' | 'advanced' | 'datasets' | 'sample';

export const PANELS: { id: PanelId; title: string }[] = [
  { id: 'job', title: 'JOB' },
  { id: 'model', title: 'MODEL' },
  { id: 'quantization', title: 'QUANTIZATION' },
  { id: 'multistage', title: 'MULTISTAGE' },
  { id: 'target', title: 'TARGET' },
  { id: 'save', title: 'SAVE' },
  { id: 'training', title: 'TRAINING' },
  { id: 'advanced', title: 'ADVANCED' },
  { id: 'datasets', title: 'DATASETS' },
  { id: 'sample', title: 'SAMPLE' },
];

export type FieldKind = 'text' | 'int' | 'float' | 'bool' | 'select' | 'multi' | 'folder';

export interface Option {
  value: string;
  label: string;
  note?: string;
}

export interface Field {
  id: string;
  panel: PanelId;
  label: string;
  help: string;
  kind: FieldKind;
  /** YAML paths this field edits; the first is the one messages usually name. */
  paths: string[];
  group?: string;
  block?: { kind: 'dataset' | 'prompt'; index: number };
  options?: Option[];
  /** Empty input removes the key instead of writing "". */
  optional?: boolean;
  get(doc: JobDoc): unknown;
  set(doc: JobDoc, value: unknown): JobDoc;
}

/** Registered datasets the Target Dataset picker offers (from the Datasets screen). */
export interface NamedDataset {
  name: string;
  folder: string;
  isReg: boolean;
}

const P = (...rest: (string | number)[]) => formatPath(procPath(...rest));

function pathField(panel: PanelId, label: string, help: string, kind: FieldKind, rest: (string | number)[], extra: Partial<Field> = {}): Field {
  return {
    id: rest.join('.'), panel, label, help, kind, paths: [P(...rest)],
    get: (doc) => effective(doc, ...rest),
    set: (doc, v) => setAt(doc, procPath(...rest), v),
    ...extra,
  };
}

const opts = (values: readonly string[], labels: Record<string, string> = {}): Option[] => values.map((v) => ({ value: v, label: labels[v] ?? v }));

/** Keep an unexpected loaded value selectable so it shows as it is rather than as a wrong default. */
function withCurrent(options: Option[], current: unknown): Option[] {
  if (typeof current !== 'string' || options.some((o) => o.value === current)) return options;
  return [...options, { value: current, label: current, note: 'from the loaded file' }];
}

// What each qtype runs as in graft's trainer (config/quantization.ts) is in its label.
const QUANT_LABELS: Record<string, string> = {
  none: 'none', qfloat8: 'float8', float8: 'float8', uint8: '8-bit (int8)', qint8: '8-bit (int8)', uint7: '7-bit (runs as int8)',
  uint6: '6-bit (runs as int8)', uint5: '5-bit (runs as int8)', uint4: '4-bit (NF4)', qint4: '4-bit (NF4)', uint3: '3-bit (runs as NF4)',
  uint2: '2-bit (runs as NF4)',
};

function quantOptions(preset: Preset | undefined, which: 'transformer' | 'text_encoder'): Option[] {
  const base = preset?.quantization[which] ?? ['none', 'qfloat8'];
  const out = base.map((q) => ({ value: q, label: QUANT_LABELS[q] ?? q }));
  if (which === 'transformer' && preset) {
    for (const [q, adapter] of Object.entries(preset.quantization.accuracy_recovery_adapters)) {
      out.push({ value: `${q}|${adapter}`, label: `${QUANT_LABELS[q] ?? q} + accuracy recovery adapter` });
    }
  }
  return out;
}

function quantField(preset: Preset | undefined, which: 'transformer' | 'text_encoder'): Field {
  const [qKey, tKey] = which === 'transformer' ? ['quantize', 'qtype'] : ['quantize_te', 'qtype_te'];
  const get = (doc: JobDoc) => (effective(doc, 'model', qKey) === true ? String(effective(doc, 'model', tKey) ?? 'qfloat8') : 'none');
  return {
    id: `model.${tKey}`, panel: 'quantization', kind: 'select',
    label: which === 'transformer' ? 'Transformer' : 'Text Encoder',
    help: which === 'transformer'
      ? 'Shrink the frozen transformer weights: float8 or 8-bit halve them, 4-bit (NF4) keeps about 0.28 of them; LoRA trains on them at full precision. The estimate is under the panel list.'
      : 'Shrink the frozen text encoders (T5-XXL: 9 GB in bf16) while captions are encoded: float8 halves them; embeddings are cached per format.',
    paths: [P('model', tKey), P('model', qKey)],
    options: [],
    get,
    set: (doc, v) => (v === 'none'
      ? setAt(doc, procPath('model', qKey), false)
      : setAt(setAt(doc, procPath('model', qKey), true), procPath('model', tKey), v)),
  };
}

export function datasetBlocks(doc: JobDoc): Record<string, unknown>[] {
  const d = getAt(doc, procPath('datasets'));
  return Array.isArray(d) ? d.map((b) => (isPlainObject(b) ? b : {})) : [];
}

// ---- sample prompts: either prompts: [text] or samples: [{prompt, ...}] -----------------------------------

export interface PromptItem {
  prompt: string;
  width?: number;
  height?: number;
  seed?: number;
  network_multiplier?: number;
  ctrl_img?: string | null;
  [key: string]: unknown;
}

function usesPromptStrings(doc: JobDoc): boolean {
  return getAt(doc, procPath('sample', 'samples')) === undefined && Array.isArray(getAt(doc, procPath('sample', 'prompts')));
}

export function promptItems(doc: JobDoc): PromptItem[] {
  const samples = getAt(doc, procPath('sample', 'samples'));
  if (Array.isArray(samples)) return samples.map((s) => (isPlainObject(s) ? (s as PromptItem) : { prompt: String(s ?? '') }));
  const prompts = getAt(doc, procPath('sample', 'prompts'));
  if (Array.isArray(prompts)) return prompts.map((p) => ({ prompt: typeof p === 'string' ? p : String(p ?? '') }));
  return [];
}

/** Write prompts back in the form the file used; switch to samples: only when a prompt gets its own settings. */
export function setPromptItems(doc: JobDoc, items: PromptItem[]): JobDoc {
  const plain = items.every((it) => Object.keys(it).every((k) => k === 'prompt'));
  if (usesPromptStrings(doc) && plain) return setAt(doc, procPath('sample', 'prompts'), items.map((it) => it.prompt));
  const next = setAt(doc, procPath('sample', 'prompts'), undefined);
  return setAt(next, procPath('sample', 'samples'), items);
}

function promptPath(doc: JobDoc, j: number, key: string): string {
  return usesPromptStrings(doc) && key === 'prompt' ? P('sample', 'prompts', j) : P('sample', 'samples', j, key);
}

export function addPrompt(doc: JobDoc, after: number): JobDoc {
  const items = promptItems(doc);
  items.splice(after + 1, 0, { prompt: '' });
  return setPromptItems(doc, items);
}
export function duplicatePrompt(doc: JobDoc, j: number): JobDoc {
  const items = promptItems(doc);
  if (!items[j]) return doc;
  items.splice(j + 1, 0, structuredClone(items[j]!));
  return setPromptItems(doc, items);
}
export function removePrompt(doc: JobDoc, j: number): JobDoc {
  const items = promptItems(doc);
  items.splice(j, 1);
  return setPromptItems(doc, items);
}

export function addDataset(doc: JobDoc, after: number): JobDoc {
  const blocks = datasetBlocks(doc);
  blocks.splice(after + 1, 0, newDatasetBlock());
  return setAt(doc, procPath('datasets'), blocks);
}
export function duplicateDataset(doc: JobDoc, i: number): JobDoc {
  const blocks = datasetBlocks(doc);
  if (!blocks[i]) return doc;
  blocks.splice(i + 1, 0, structuredClone(blocks[i]!));
  return setAt(doc, procPath('datasets'), blocks);
}
export function removeDataset(doc: JobDoc, i: number): JobDoc {
  const blocks = datasetBlocks(doc);
  if (blocks.length <= 1) return doc; // a job needs a dataset; the last block is cleared instead
  blocks.splice(i, 1);
  return setAt(doc, procPath('datasets'), blocks);
}

// ---- the fields ------------------------------------------------------------------------------------

export interface FormContext {
  presets: Preset[];
  datasets?: NamedDataset[];
}

export function buildFields(doc: JobDoc, ctx: FormContext): Field[] {
  const preset = familyFor(getAt(doc, procPath('model')), ctx.presets);
  const panels = preset?.panels;
  const on = (...rest: (string | number)[]) => effective(doc, ...rest) === true;
  const f: Field[] = [];

  // JOB
  f.push({
    id: 'name', panel: 'job', kind: 'text', label: 'Training Name', paths: ['config.name'],
    help: 'Names the job folder and the LoRA files: letters, digits, . _ -',
    get: (d) => getAt(d, ['config', 'name']), set: (d, v) => setAt(d, ['config', 'name'], v),
  });
  f.push({
    id: 'device', panel: 'job', kind: 'int', label: 'GPU ID', paths: [P('device')],
    help: 'Which GPU this job runs on (nvidia-smi index; each GPU has its own queue), or cpu.',
    get: (d) => (effective(d, 'device') === 'cpu' ? 'cpu' : gpuIndexOf(effective(d, 'device'))),
    set: (d, v) => setAt(d, procPath('device'), typeof v === 'string' && v.trim().toLowerCase() === 'cpu' ? 'cpu' : `cuda:${typeof v === 'number' ? v : String(v ?? '')}`),
  });
  f.push(pathField('job', 'Trigger Word', 'Prepended to every caption that lacks it; [trigger] in captions is replaced. Files on disk never change.', 'text', ['trigger_word'], { optional: true }));
  f.push(pathField('job', 'Training Folder', 'Where the job folder <folder>/<name>/ goes; a relative path is taken inside the graft home.', 'text', ['training_folder']));

  // MODEL
  f.push({
    id: 'model.arch', panel: 'model', kind: 'select', label: 'Model Architecture', paths: [P('model', 'arch')],
    help: 'The model family; choosing one loads its preset (base model, sampler, schedule, quantization).',
    options: ctx.presets.map((p) => ({ value: p.family, label: p.label, note: `${p.group}, ${trains(p) ? 'trains here' : 'not supported yet'}` })),
    get: () => preset?.family ?? '',
    set: (d, v) => {
      const next = presetById(String(v), ctx.presets);
      return next ? applyPreset(d, next, preset) : d;
    },
  });
  if (preset?.family === 'flux1') {
    f.push(pathField('model', 'Name or Path', 'A hub id (black-forest-labs/FLUX.1-dev: gated, accept its licence and set HF_TOKEN), a diffusers folder, or a flux1-*.safetensors file with ae, clip_l and t5xxl files beside it (BFL, ComfyUI).', 'text', ['model', 'name_or_path']));
    f.push(pathField('model', 'Extras Name or Path', `With a single transformer file: the diffusers folder or hub id its tokenizers (and any part not beside it) come from; default ${FLUX_DEFAULT_EXTRAS}.`, 'text', ['model', 'extras_name_or_path'], { optional: true }));
  } else {
    f.push(pathField('model', 'Name or Path', 'A local folder or file, or a hub id org/model or org/model@revision (gated models need HF_TOKEN).', 'text', ['model', 'name_or_path']));
  }
  if (panels?.low_vram ?? true) f.push(pathField('model', 'Low VRAM', 'Keep parts of the model in host memory between uses: slower, fits smaller GPUs.', 'bool', ['model', 'low_vram']));
  if (panels?.layer_offloading) {
    f.push(pathField('model', 'Layer Offloading', 'Keep that share of the transformer blocks in host memory and stream each in ahead of use (a GPU copies the next block while it runs this one): less VRAM, a slower step where the copy outlasts the compute. The text encoders are freed once captions are encoded.', 'bool', ['model', 'layer_offloading']));
    if (on('model', 'layer_offloading')) {
      for (const [label, key] of [['Transformer Offload %', 'layer_offloading_transformer_percent'], ['Text Encoder Offload %', 'layer_offloading_text_encoder_percent']] as const) {
        f.push({
          id: `model.${key}`, panel: 'model', kind: 'int', label, paths: [P('model', key)],
          help: 'Share of layers kept in host memory, 0-100 (stored as 0-1 in the YAML).',
          get: (d) => { const v = effective(d, 'model', key); return typeof v === 'number' ? Math.round(v * 100) : v; },
          set: (d, v) => setAt(d, procPath('model', key), typeof v === 'number' ? v / 100 : v),
        });
      }
    }
  }

  // QUANTIZATION
  const qt = quantField(preset, 'transformer');
  qt.options = withCurrent(quantOptions(preset, 'transformer'), qt.get(doc));
  const qte = quantField(preset, 'text_encoder');
  qte.options = withCurrent(quantOptions(preset, 'text_encoder'), qte.get(doc));
  f.push(qt, qte);

  // MULTISTAGE (Wan 2.2 14B)
  if (panels?.multistage) {
    const kw = (key: string, label: string, help: string): Field => ({
      id: `model.model_kwargs.${key}`, panel: 'multistage', kind: 'bool', label, help, paths: [P('model', 'model_kwargs', key)],
      get: (d) => getAt(d, procPath('model', 'model_kwargs', key)) !== false,
      set: (d, v) => setAt(d, procPath('model', 'model_kwargs', key), v),
    });
    f.push(kw('train_high_noise', 'Train High Noise', `Train the high-noise expert (t above ${preset?.multistage_boundary ?? 0.875}): composition and motion.`));
    f.push(kw('train_low_noise', 'Train Low Noise', 'Train the low-noise expert: detail and texture.'));
    f.push(pathField('multistage', 'Switch Every', 'Alternate between the two experts every N steps.', 'int', ['train', 'switch_boundary_every']));
  }

  // TARGET
  f.push(pathField('target', 'Target Type', 'LoRA (low-rank update) or LoKr (Kronecker product: smaller, less widely supported).', 'select', ['network', 'type'], { options: opts(['lora', 'lokr'], { lora: 'LoRA', lokr: 'LoKr' }) }));
  if (effective(doc, 'network', 'type') === 'lokr') {
    f.push(pathField('target', 'LoKr Factor', 'Kronecker split factor; -1 picks the most balanced split.', 'int', ['network', 'lokr_factor']));
    f.push(pathField('target', 'LoKr Full Rank', 'The larger Kronecker factor as a full matrix (no low-rank split; the rank is then unused).', 'bool', ['network', 'lokr_full_rank']));
  }
  const rankField = (label: string, key: 'linear' | 'conv', help: string): Field => ({
    id: `network.${key}`, panel: 'target', kind: 'int', label, help, paths: [P('network', key), P('network', `${key}_alpha`)],
    get: (d) => effective(d, 'network', key),
    set: (d, v) => {
      // Alpha follows the rank, as in the reference UI, unless the file set its own alpha.
      const rank = getAt(d, procPath('network', key)), alpha = getAt(d, procPath('network', `${key}_alpha`));
      const next = setAt(d, procPath('network', key), v);
      return typeof v === 'number' && (alpha === undefined || alpha === rank) ? setAt(next, procPath('network', `${key}_alpha`), v) : next;
    },
  });
  f.push(rankField('Linear Rank', 'linear', 'Rank of the adapter on linear layers (alpha follows); 16-32 suits most subjects and styles.'));
  if (panels?.conv) f.push(rankField('Conv Rank', 'conv', 'Rank of the adapter on the UNet conv layers (SD 1.5 / SDXL).'));

  // SAVE
  f.push(pathField('save', 'Data Type', 'Precision of the saved LoRA file.', 'select', ['save', 'dtype'], { options: withCurrent(opts(['bf16', 'fp16', 'fp32'], { bf16: 'BF16', fp16: 'FP16', fp32: 'FP32' }), effective(doc, 'save', 'dtype')) }));
  f.push(pathField('save', 'Save Every', 'Write a checkpoint every N steps (and at the end).', 'int', ['save', 'save_every']));
  f.push(pathField('save', 'Max Step Saves to Keep', 'Older step checkpoints beyond this many are deleted; the newest good one never is.', 'int', ['save', 'max_step_saves_to_keep']));

  // TRAINING
  f.push(pathField('training', 'Batch Size', 'Images per step; one bucket per batch.', 'int', ['train', 'batch_size']));
  const accumKey = getAt(doc, procPath('train', 'gradient_accumulation')) === undefined && getAt(doc, procPath('train', 'gradient_accumulation_steps')) !== undefined
    ? 'gradient_accumulation_steps' : 'gradient_accumulation';
  f.push(pathField('training', 'Gradient Accumulation', 'Sum gradients over N batches before each update (effective batch = batch x N).', 'int', ['train', accumKey]));
  f.push(pathField('training', 'Steps', 'Total optimizer steps; 500-4000 is a usual range.', 'int', ['train', 'steps']));
  f.push(pathField('training', 'Optimizer', 'adamw8bit: 8-bit states, a quarter the memory; adafactor: least; lion: 3-10x lower LR; prodigy: finds its LR (set 1).', 'select', ['train', 'optimizer'], { options: withCurrent(opts(OPTIMIZERS), effective(doc, 'train', 'optimizer')) }));
  f.push(pathField('training', 'Learning Rate', 'Step size; 1e-4 is a common start for LoRA. Lower it if the loss explodes.', 'float', ['train', 'lr']));
  f.push(pathField('training', 'Weight Decay', 'Pull adapter weights toward zero each step (optimizer_params.weight_decay).', 'float', ['train', 'optimizer_params', 'weight_decay']));
  f.push(pathField('training', 'LR Scheduler', 'How the LR changes: linear and cosine end at 0; cosine_with_restarts starts over each cycle.', 'select', ['train', 'lr_scheduler'], { options: opts(LR_SCHEDULERS) }));
  if (effective(doc, 'train', 'lr_scheduler') !== 'constant') {
    f.push(pathField('training', 'Warmup Steps', 'Steps over which the learning rate rises from near 0 to its value first.', 'int', ['train', 'lr_warmup_steps']));
  }
  if (effective(doc, 'train', 'lr_scheduler') === 'cosine_with_restarts') {
    f.push(pathField('training', 'Restart Every', 'Steps in each cosine cycle (lr_scheduler_params.T_0); unset: one cycle over the whole run.', 'int', ['train', 'lr_scheduler_params', 'T_0']));
  }
  if (panels?.timestep_type ?? true) {
    f.push(pathField('training', 'Timestep Type', 'Linear: uniform; Sigmoid: mid timesteps; Weighted: uniform with a mid-favouring loss weight; Shift: by resolution; LogNorm Blend: mostly mid-high noise.', 'select', ['train', 'timestep_type'], { options: withCurrent(opts(TIMESTEP_TYPES), effective(doc, 'train', 'timestep_type')) }));
  }
  f.push(pathField('training', 'Timestep Bias', 'Balanced; High Noise favours structure (t near 1); Low Noise favours detail (t near 0).', 'select', ['train', 'content_or_style'], { options: opts(['balanced', 'content', 'style'], { balanced: 'Balanced', content: 'High Noise', style: 'Low Noise' }) }));
  f.push(pathField('training', 'Use EMA', 'Keep a smoothed copy of the adapter; samples and saves use it.', 'bool', ['train', 'ema_config', 'use_ema']));
  if (on('train', 'ema_config', 'use_ema')) f.push(pathField('training', 'EMA Decay', 'Smoothing factor, below 1; 0.99 is usual.', 'float', ['train', 'ema_config', 'ema_decay']));
  f.push(pathField('training', 'Unload TE', 'Encode only the trigger word once and free the text encoder; captions are ignored.', 'bool', ['train', 'unload_text_encoder']));
  f.push(pathField('training', 'Cache Text Embeddings', 'Encode every caption once, then free the text encoder from GPU memory.', 'bool', ['train', 'cache_text_embeddings']));
  f.push(pathField('training', 'Gradient Checkpointing', 'Recompute activations in backward to save memory (slower).', 'bool', ['train', 'gradient_checkpointing']));

  // ADVANCED / REGULARIZATION
  f.push(pathField('advanced', 'Differential Output Preservation', 'Also match the base model on the caption with the trigger replaced by the class, so the class keeps its look.', 'bool', ['train', 'diff_output_preservation']));
  if (on('train', 'diff_output_preservation')) {
    f.push(pathField('advanced', 'DOP Loss Multiplier', 'Weight of the preservation loss.', 'float', ['train', 'diff_output_preservation_multiplier']));
    f.push(pathField('advanced', 'DOP Preservation Class', 'What the subject is, e.g. person, dog, style.', 'text', ['train', 'diff_output_preservation_class']));
  }
  f.push(pathField('advanced', 'Blank Prompt Preservation', 'Also match the base model on an empty prompt (only one of this and DOP).', 'bool', ['train', 'blank_prompt_preservation']));
  if (on('train', 'blank_prompt_preservation')) {
    f.push(pathField('advanced', 'BPP Loss Multiplier', 'Weight of the blank-prompt preservation loss.', 'float', ['train', 'blank_prompt_preservation_multiplier']));
  }
  f.push(pathField('advanced', 'Do Differential Guidance', 'Push the target further from the current prediction: pred + scale x (target - pred).', 'bool', ['train', 'do_differential_guidance']));
  if (on('train', 'do_differential_guidance')) f.push(pathField('advanced', 'Guidance Scale', 'Differential guidance strength; 3 is a common value.', 'float', ['train', 'differential_guidance_scale']));

  // DATASETS
  const named = ctx.datasets ?? [];
  datasetBlocks(doc).forEach((_, i) => {
    const group = `Dataset ${i + 1}`;
    const block = { kind: 'dataset' as const, index: i };
    const ds = (label: string, help: string, kind: FieldKind, key: string, extra: Partial<Field> = {}): Field => ({
      ...pathField('datasets', label, help, kind, ['datasets', i, key], extra),
      get: (d) => { const v = getAt(d, procPath('datasets', i, key)); return v === undefined ? getAt(newDatasetBlock(), [key]) : v; },
      id: `datasets.${i}.${key}`, group, block,
    });
    f.push(ds('Target Dataset', named.length > 0 ? 'Folder of images (or clips) with captions; Enter picks a dataset from the Datasets screen or types a path.' : 'Folder of images (or clips) with captions; add named datasets on the Datasets screen (4).', 'folder', 'folder_path', {
      options: named.map((n) => ({ value: n.folder, label: n.name, note: n.isReg ? 'regularization' : n.folder })),
      set: (d, v) => {
        let next = setAt(d, procPath('datasets', i, 'folder_path'), v);
        const match = named.find((n) => n.folder === v);
        if (match?.isReg) next = setAt(next, procPath('datasets', i, 'is_reg'), true);
        return next;
      },
    }));
    f.push(ds('Caption Extension', 'Caption files next to each image: txt, caption, json; or a metadata.jsonl.', 'select', 'caption_ext', { options: opts(CAPTION_EXTS) }));
    f.push(ds('LoRA Weight', 'Relative sampling weight: a dataset of weight 2 is drawn about twice as often.', 'float', 'network_weight'));
    f.push(ds('Default Caption', 'Used for images without a caption file.', 'text', 'default_caption'));
    f.push(ds('Caption Dropout Rate', 'Chance (0-1) that a caption is left empty for a step (then the trigger alone).', 'float', 'caption_dropout_rate'));
    f.push(ds('Num Repeats', 'Each image counts this many times per epoch.', 'int', 'num_repeats'));
    if (panels?.video) f.push(ds('Num Frames', 'Frames taken evenly from each clip; 1 for images.', 'int', 'num_frames'));
    f.push(ds('Cache Latents', 'Store each encoded image on disk next to the job and reuse it across runs.', 'bool', 'cache_latents_to_disk'));
    f.push(ds('Is Regularization', 'Regularization images keep the base model\'s look; they get no trigger.', 'bool', 'is_reg'));
    f.push(ds('Flip X', 'Add mirrored (left-right) copies of every image.', 'bool', 'flip_x'));
    f.push(ds('Flip Y', 'Add upside-down copies of every image.', 'bool', 'flip_y'));
    f.push(ds('Resolutions', 'Bucket sizes; each image goes to the largest that does not upscale it. Left/Right move, Space toggles.', 'multi', 'resolution', {
      options: ALL_RESOLUTIONS.map((r) => ({ value: String(r), label: String(r) })),
      get: (d) => { const v = getAt(d, procPath('datasets', i, 'resolution')); return v === undefined ? [512, 768, 1024] : typeof v === 'number' ? [v] : v; },
    }));
    if (panels?.control) f.push(ds('Control Dataset', 'Folder of control images with the same file names (edit / image-to-video models).', 'folder', 'control_path', { optional: true, options: named.map((n) => ({ value: n.folder, label: n.name, note: n.folder })) }));
  });

  // SAMPLE
  f.push(pathField('sample', 'Sample Every', 'Generate the prompts below every N steps.', 'int', ['sample', 'sample_every']));
  f.push(pathField('sample', 'Sampler', 'Must match the training schedule: FlowMatch Euler, or DDPM for SD 1.5 / SDXL.', 'select', ['sample', 'sampler'], { options: opts(SAMPLERS, { flowmatch: 'FlowMatch', ddpm: 'DDPM' }) }));
  f.push(pathField('sample', 'Width', 'Sample width in pixels.', 'int', ['sample', 'width']));
  f.push(pathField('sample', 'Height', 'Sample height in pixels.', 'int', ['sample', 'height']));
  f.push(pathField('sample', 'Seed', 'Seed of every sample (fixed, so samples compare across steps).', 'int', ['sample', 'seed']));
  f.push(pathField('sample', 'Walk Seed', 'Use seed + i for prompt i instead of one seed for all.', 'bool', ['sample', 'walk_seed']));
  f.push(pathField('sample', 'Guidance Scale', 'Classifier-free guidance for samples.', 'float', ['sample', 'guidance_scale']));
  f.push(pathField('sample', 'Sample Steps', 'Denoising steps per sample.', 'int', ['sample', 'sample_steps']));
  if (panels?.video) {
    f.push(pathField('sample', 'Num Frames', 'Frames per sample clip; 1 for still images.', 'int', ['sample', 'num_frames']));
    f.push(pathField('sample', 'FPS', 'Frame rate of sample clips.', 'int', ['sample', 'fps']));
  }
  f.push(pathField('sample', 'Skip First Sample', 'Do not sample before the first step.', 'bool', ['train', 'skip_first_sample']));
  f.push(pathField('sample', 'Force First Sample', 'Sample before the first step even when resuming.', 'bool', ['train', 'force_first_sample']));
  f.push(pathField('sample', 'Disable Sampling', 'Never sample during training (faster, nothing to look at).', 'bool', ['train', 'disable_sampling']));
  promptItems(doc).forEach((_, j) => {
    const group = `Prompt ${j + 1}`;
    const block = { kind: 'prompt' as const, index: j };
    const pf = (label: string, help: string, kind: FieldKind, key: keyof PromptItem & string, optional: boolean): Field => ({
      id: `prompt.${j}.${key}`, panel: 'sample', label, help, kind, group, block, optional,
      paths: [promptPath(doc, j, key)],
      get: (d) => promptItems(d)[j]?.[key],
      set: (d, v) => {
        const items = promptItems(d);
        const item = { ...items[j]! };
        if (v === undefined) delete item[key]; else item[key] = v;
        items[j] = item as PromptItem;
        return setPromptItems(d, items);
      },
    });
    f.push(pf('Prompt', '[trigger] is replaced with the trigger word.', 'text', 'prompt', false));
    f.push(pf('Width', 'This prompt\'s width (empty: the sample width).', 'int', 'width', true));
    f.push(pf('Height', 'This prompt\'s height (empty: the sample height).', 'int', 'height', true));
    f.push(pf('Seed', 'This prompt\'s seed (empty: the sample seed).', 'int', 'seed', true));
    f.push(pf('LoRA Scale', 'Adapter strength for this prompt (network_multiplier; empty: 1).', 'float', 'network_multiplier', true));
    if (panels?.control) f.push(pf('Control Image', 'Control / start image for this prompt (edit and I2V models).', 'text', 'ctrl_img', true));
  });
  return f;
}

// ---- text <-> value ------------------------------------------------------------------------------

/** What the user typed, as the YAML value. Text that is not a number stays text so validation can name it. */
export function parseInput(field: Field, text: string): unknown {
  const t = text.trim();
  if (t === '' && field.optional) return undefined;
  if (field.kind === 'int') return /^[-+]?\d+$/.test(t) ? Number(t) : text;
  if (field.kind === 'float') return t !== '' && Number.isFinite(Number(t)) ? Number(t) : text;
  return text;
}

export function formatNumber(v: number): string {
  return String(v);
}

/** The value as the form shows it. */
export function displayValue(field: Field, value: unknown): string {
  if (value === undefined || value === null) return '';
  switch (field.kind) {
    case 'bool': return value === true ? '[x]' : value === false ? '[ ]' : String(value);
    case 'select': {
      const o = field.options?.find((x) => x.value === value);
      return o ? o.label : String(value);
    }
    case 'folder': {
      const o = field.options?.find((x) => x.value === value);
      return o ? `${o.label} (${String(value)})` : String(value);
    }
    case 'multi': return Array.isArray(value) ? value.join(', ') : String(value);
    default: return typeof value === 'number' ? formatNumber(value) : String(value);
  }
}

/** The text an edit starts from. */
export function editText(field: Field, value: unknown): string {
  if (value === undefined || value === null) return '';
  return typeof value === 'number' ? formatNumber(value) : String(value);
}

// ---- issues per field ----------------------------------------------------------------------------

function covers(fieldPath: string, issuePath: string): boolean {
  if (issuePath === fieldPath) return true;
  if (!issuePath.startsWith(fieldPath)) return false;
  const next = issuePath[fieldPath.length];
  return next === '.' || next === '[';
}

export function issuesFor(field: Field, issues: Issue[]): Issue[] {
  return issues.filter((iss) => field.paths.some((p) => covers(p, iss.path) || (iss.also ?? []).some((a) => covers(p, a))));
}
