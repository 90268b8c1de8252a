// Validation of a job document: per-key types and ranges (zod), combinations that exclude each other,
// and keys graft does not know. Every message names the YAML path, the value and what is allowed.
import type { z } from 'zod';
import { allArchNames, familyFor, referenceOnlyFamily, type Preset } from '../presets.js';
import { formatPath, getAt, isPlainObject, type Path } from '../util/objpath.js';
import { DEFAULT_PROCESS, PROC, procPath, type JobDoc } from './document.js';
import { JobSchema, PROCESS_TYPES, SAMPLERS } from './schema.js';

export interface Issue {
  /** error: invalid, fix it; unsupported: valid, but graft cannot run it yet (support.ts); warning: runs, maybe not as meant. */
  level: 'error' | 'unsupported' | 'warning';
  rule: string;
  /** YAML path the message is about, e.g. config.process[0].train.lr */
  path: string;
  /** Other paths the same message concerns (both halves of an excluded combination). */
  also?: string[];
  message: string;
}

export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (typeof v === 'string') return JSON.stringify(v);
  try {
    const s = JSON.stringify(v);
    return s.length > 60 ? `${s.slice(0, 57)}...` : s;
  } catch {
    return String(v);
  }
}

/** The value in the document, or graft's default when the key is absent. */
export function effective(doc: JobDoc, ...rest: (string | number)[]): unknown {
  const v = getAt(doc, procPath(...rest));
  return v === undefined || v === null ? getAt(DEFAULT_PROCESS, rest) : v;
}

function schemaIssues(doc: JobDoc): Issue[] {
  const parsed = JobSchema.safeParse(doc);
  if (parsed.success) return [];
  return parsed.error.issues.map((iss) => {
    const path = iss.path as Path;
    const value = getAt(doc, path);
    return {
      level: 'error' as const,
      rule: `type:${formatPath(path.map((k) => (typeof k === 'number' ? 0 : k)))}`,
      path: formatPath(path),
      message: `${formatPath(path) || '(top)'}: ${iss.message} (got ${describeValue(value)})`,
    };
  });
}

const P = (...rest: (string | number)[]) => formatPath(procPath(...rest));
const on = (doc: JobDoc, ...rest: (string | number)[]) => effective(doc, ...rest) === true;
function datasetsOf(doc: JobDoc): Record<string, unknown>[] {
  const ds = getAt(doc, procPath('datasets'));
  return Array.isArray(ds) ? ds.filter(isPlainObject) : [];
}

/** Combinations that cannot run together. Each rule is one function so tests can show it failing. */
export const CROSS_RULES: { rule: string; check: (doc: JobDoc, preset: Preset | undefined) => Issue[] }[] = [
  {
    rule: 'unload-te-with-cache-te',
    check: (doc) => on(doc, 'train', 'unload_text_encoder') && on(doc, 'train', 'cache_text_embeddings')
      ? [{ level: 'error', rule: 'unload-te-with-cache-te', path: P('train', 'cache_text_embeddings'), also: [P('train', 'unload_text_encoder')],
          message: `${P('train', 'cache_text_embeddings')}: true excludes ${P('train', 'unload_text_encoder')}: true. Cache Text Embeddings encodes every caption once and frees the text encoder; Unload TE encodes only the trigger word and ignores captions. Turn one off.` }]
      : [],
  },
  {
    rule: 'dop-with-blank-prompt',
    check: (doc) => on(doc, 'train', 'diff_output_preservation') && on(doc, 'train', 'blank_prompt_preservation')
      ? [{ level: 'error', rule: 'dop-with-blank-prompt', path: P('train', 'blank_prompt_preservation'), also: [P('train', 'diff_output_preservation')],
          message: `${P('train', 'blank_prompt_preservation')}: true excludes ${P('train', 'diff_output_preservation')}: true. Use only one of Differential Output Preservation and Blank Prompt Preservation.` }]
      : [],
  },
  {
    rule: 'cache-te-with-dop',
    check: (doc) => on(doc, 'train', 'cache_text_embeddings') && on(doc, 'train', 'diff_output_preservation')
      ? [{ level: 'error', rule: 'cache-te-with-dop', path: P('train', 'cache_text_embeddings'), also: [P('train', 'diff_output_preservation')],
          message: `${P('train', 'cache_text_embeddings')}: true excludes ${P('train', 'diff_output_preservation')}: true. DOP encodes a new prompt every step (the caption with the trigger replaced by the Preservation Class), so the text encoder must stay loaded. Turn off Cache Text Embeddings or DOP.` }]
      : [],
  },
  {
    rule: 'cache-te-with-changing-captions',
    check: (doc) => {
      if (!on(doc, 'train', 'cache_text_embeddings')) return [];
      return datasetsOf(doc).flatMap((d, i) => {
        const changing = d.shuffle_tokens === true ? 'shuffle_tokens: true' : typeof d.token_dropout_rate === 'number' && d.token_dropout_rate > 0 ? `token_dropout_rate: ${d.token_dropout_rate}` : undefined;
        if (!changing) return [];
        const key = d.shuffle_tokens === true ? 'shuffle_tokens' : 'token_dropout_rate';
        return [{ level: 'error' as const, rule: 'cache-te-with-changing-captions', path: P('datasets', i, key), also: [P('train', 'cache_text_embeddings')],
          message: `${P('datasets', i, key)}: ${changing.split(': ')[1]} changes the caption text every step, which cached text embeddings cannot follow (${P('train', 'cache_text_embeddings')}: true). Turn one off. (Plain caption dropout is fine: the empty caption is cached once.)` }];
      });
    },
  },
  {
    rule: 'dop-needs-class',
    check: (doc) => {
      if (!on(doc, 'train', 'diff_output_preservation')) return [];
      const cls = effective(doc, 'train', 'diff_output_preservation_class');
      return typeof cls === 'string' && cls.trim() !== '' ? [] : [{ level: 'error', rule: 'dop-needs-class', path: P('train', 'diff_output_preservation_class'),
        message: `${P('train', 'diff_output_preservation_class')}: must name what the subject is (e.g. person) when Differential Output Preservation is on (got ${describeValue(cls)})` }];
    },
  },
  {
    rule: 'multistage-trains-nothing',
    check: (doc, preset) => {
      if (!preset?.panels.multistage) return [];
      const kw = getAt(doc, procPath('model', 'model_kwargs'));
      const hi = isPlainObject(kw) ? kw.train_high_noise !== false : true;
      const lo = isPlainObject(kw) ? kw.train_low_noise !== false : true;
      return hi || lo ? [] : [{ level: 'error', rule: 'multistage-trains-nothing', path: P('model', 'model_kwargs', 'train_high_noise'), also: [P('model', 'model_kwargs', 'train_low_noise')],
        message: `${P('model', 'model_kwargs')}: train_high_noise and train_low_noise are both false, so nothing would be trained. Turn on at least one.` }];
    },
  },
  {
    rule: 'sampler-matches-scheduler',
    check: (doc) => {
      const sampler = effective(doc, 'sample', 'sampler');
      const sched = effective(doc, 'train', 'noise_scheduler');
      // Only when both are valid; a bad value already has its own message.
      const known = (v: unknown) => (SAMPLERS as readonly unknown[]).includes(v);
      return sampler === sched || !known(sampler) || !known(sched) ? [] : [{ level: 'error', rule: 'sampler-matches-scheduler', path: P('sample', 'sampler'), also: [P('train', 'noise_scheduler')],
        message: `${P('sample', 'sampler')}: ${describeValue(sampler)} must match ${P('train', 'noise_scheduler')} (${describeValue(sched)}): samples are drawn with the schedule the model is trained on` }];
    },
  },
];

function archIssues(doc: JobDoc, presets: Preset[]): Issue[] {
  const model = getAt(doc, procPath('model'));
  if (!isPlainObject(model)) return [];
  // A family of the reference toolkit graft has no preset for is valid; support.ts names it unsupported.
  if (familyFor(model, presets) || referenceOnlyFamily(model)) return [];
  const path = P('model', 'arch');
  const arch = model.arch;
  const message = arch === undefined
    ? `${path}: missing, and no legacy flag (is_flux: true, is_xl: true) or known name_or_path says which model family this is. Allowed: ${allArchNames(presets).join(', ')}`
    : `${path}: unknown model architecture (got ${describeValue(arch)}). Allowed: ${allArchNames(presets).join(', ')}`;
  return [{ level: 'error', rule: 'unknown-arch', path, message }];
}

/** Another kind of training than LoRA on datasets (a slider: job: train, type slider): not checked as one. */
export function otherProcessKind(doc: JobDoc): boolean {
  const type = getAt(doc, procPath('type'));
  return getAt(doc, ['job']) === 'train' || (typeof type === 'string' && !(PROCESS_TYPES as readonly string[]).includes(type) && /slider|reference|concept|generate|extract/.test(type));
}

/** All errors of a document. An empty list means it can be saved (support.ts says whether graft can run it). */
export function validateJob(doc: JobDoc, presets: Preset[]): Issue[] {
  if (otherProcessKind(doc)) return [];
  const issues = schemaIssues(doc);
  const process0 = getAt(doc, PROC);
  if (!isPlainObject(process0)) return issues;
  const preset = familyFor(getAt(doc, procPath('model')), presets);
  issues.push(...archIssues(doc, presets));
  for (const r of CROSS_RULES) issues.push(...r.check(doc, preset));
  return issues;
}

// ---- unknown keys -------------------------------------------------------------------------------

type AnySchema = z.core.$ZodType;

function walkUnknown(schema: AnySchema, value: unknown, path: Path, out: string[]): void {
  const def = schema._zod.def as unknown as Record<string, unknown> & { type: string };
  switch (def.type) {
    case 'optional':
    case 'nullable':
    case 'default':
      walkUnknown(def.innerType as AnySchema, value, path, out);
      return;
    case 'pipe':
      walkUnknown(def.in as AnySchema, value, path, out);
      return;
    case 'union': {
      const options = def.options as AnySchema[];
      const objectLike = options.find((o) => ['object', 'array'].includes((o._zod.def as { type: string }).type)
        && (Array.isArray(value) === ((o._zod.def as { type: string }).type === 'array')));
      if (objectLike) walkUnknown(objectLike, value, path, out);
      return;
    }
    case 'array':
      if (Array.isArray(value)) value.forEach((v, i) => walkUnknown(def.element as AnySchema, v, [...path, i], out));
      return;
    case 'object': {
      if (!isPlainObject(value)) return;
      const shape = def.shape as Record<string, AnySchema>;
      for (const [k, v] of Object.entries(value)) {
        if (k in shape) walkUnknown(shape[k]!, v, [...path, k], out);
        else out.push(formatPath([...path, k]));
      }
      return;
    }
    default:
      return; // records (free-form mappings such as meta, model_kwargs) and leaves
  }
}

/** Keys graft does not use. They are kept on save; the UI reports them once as ignored. */
export function unknownKeys(doc: JobDoc): string[] {
  const out: string[] = [];
  walkUnknown(JobSchema as unknown as AnySchema, doc, [], out);
  return out;
}
