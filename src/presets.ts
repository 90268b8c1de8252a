// Model family presets: presets/<family>.yaml, validated when loaded.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { load } from 'js-yaml';
import { z } from 'zod';
import { presetsDir } from './paths.js';
import { isPlainObject } from './util/objpath.js';

const PresetSchema = z.object({
  family: z.string().regex(/^[a-z0-9_]+$/),
  label: z.string().min(1),
  group: z.enum(['image', 'edit', 'video']),
  help: z.string(),
  trainer_support: z.enum(['yes', 'in progress', 'not yet']),
  arch: z.string().min(1),
  aliases: z.array(z.string()).default([]),
  legacy_flag: z.string().optional(),
  name_or_path: z.string().min(1),
  divisibility: z.number().int().positive(),
  multistage_boundary: z.number().min(0).max(1).optional(),
  panels: z.object({
    low_vram: z.boolean(),
    layer_offloading: z.boolean(),
    conv: z.boolean(),
    multistage: z.boolean(),
    control: z.boolean(),
    video: z.boolean(),
    timestep_type: z.boolean(),
  }),
  quantization: z.object({
    transformer: z.array(z.string()).min(1),
    accuracy_recovery_adapters: z.record(z.string(), z.string()).default({}),
    text_encoder: z.array(z.string()).min(1),
  }),
  vram: z.object({
    guide: z.string(),
    min_gb: z.number().nonnegative(),  // 0: runs without a GPU (the built-in demo model)
    comfortable_gb: z.number().nonnegative(),
    max_resolution_at_min: z.number().int().positive(),
  }),
  defaults: z.record(z.string(), z.unknown()).default({}),
});

export type Preset = z.infer<typeof PresetSchema>;

export function parsePreset(text: string, source: string): Preset {
  const parsed = PresetSchema.safeParse(load(text));
  if (!parsed.success) {
    const first = parsed.error.issues[0]!;
    throw new Error(`${source}: ${first.path.join('.') || '(top)'}: ${first.message}`);
  }
  return parsed.data;
}

const GROUP_ORDER = { image: 0, edit: 1, video: 2 } as const;
let cache: Preset[] | undefined;

/** Every preset in presets/, image families first, then edit, then video, in file order within a group. */
export function loadPresets(dir = presetsDir()): Preset[] {
  if (cache && dir === presetsDir()) return cache;
  const files = readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort();
  const presets = files.map((f) => parsePreset(readFileSync(join(dir, f), 'utf8'), join(dir, f)));
  presets.sort((a, b) => GROUP_ORDER[a.group] - GROUP_ORDER[b.group] || specRank(a) - specRank(b));
  if (dir === presetsDir()) cache = presets;
  return presets;
}

// The order of SPEC.md section 2, so the architecture list reads like the spec.
const SPEC_ORDER = [
  'flux1', 'flux2', 'flex1', 'flex2', 'chroma', 'zimage_turbo', 'zimage', 'qwen_image', 'qwen_image_2512', 'sd15', 'sdxl',
  'omnigen2', 'lumina2', 'hidream', 'flux_kontext', 'qwen_image_edit', 'qwen_image_edit_2509', 'qwen_image_edit_2511',
  'hidream_e1', 'wan21_1b', 'wan21_14b', 'wan21_i2v_480p', 'wan21_i2v_720p', 'wan22_5b', 'wan22_14b_t2v', 'wan22_14b_i2v', 'ltx2',
];
function specRank(p: Preset): number {
  const i = SPEC_ORDER.indexOf(p.family);
  return i < 0 ? SPEC_ORDER.length : i;
}

/**
 * Which family a config's model section means: its arch (or an alias), or a legacy flag such as is_flux.
 * When an arch names several families (zimage = base or Turbo), the one whose default model matches wins.
 * Without either, the family whose default model is name_or_path; failing that SD 1.5, which is what the
 * reference toolkit trains for a config that does not say (its arch defaults to sd1).
 */
export function familyFor(model: unknown, presets: Preset[]): Preset | undefined {
  if (!isPlainObject(model)) return undefined;
  const arch = model.arch;
  if (typeof arch === 'string') {
    const exact = presets.filter((p) => p.arch === arch);
    const alias = presets.filter((p) => p.aliases.includes(arch));
    const candidates = [...exact, ...alias];
    if (candidates.length === 0) return undefined;
    const byModel = candidates.find((p) => p.name_or_path === model.name_or_path);
    return byModel ?? exact[0] ?? candidates[0];
  }
  if (arch !== undefined && arch !== null) return undefined;
  const byFlag = presets.find((p) => p.legacy_flag !== undefined && model[p.legacy_flag] === true);
  if (byFlag) return byFlag;
  if (LEGACY_FLAGS_WITHOUT_PRESET.some((f) => model[f] === true)) return undefined;
  return presets.find((p) => p.name_or_path === model.name_or_path) ?? presets.find((p) => p.aliases.includes('sd1'));
}

/** How familyFor found the family when model.arch is absent (for the warning that says so), else undefined. */
export function familyGuess(model: unknown, presets: Preset[]): 'name_or_path' | 'default' | undefined {
  if (!isPlainObject(model) || (model.arch !== undefined && model.arch !== null)) return undefined;
  if (presets.some((p) => p.legacy_flag !== undefined && model[p.legacy_flag] === true)) return undefined;
  if (LEGACY_FLAGS_WITHOUT_PRESET.some((f) => model[f] === true)) return undefined;
  return presets.some((p) => p.name_or_path === model.name_or_path) ? 'name_or_path' : 'default';
}

/** Families of the reference toolkit graft has no preset for, by model.arch and by legacy flag. */
export const REFERENCE_ONLY_FAMILIES: { arch: string; flag?: string; label: string }[] = [
  { arch: 'sd2', flag: 'is_v2', label: 'Stable Diffusion 2' },
  { arch: 'sd3', flag: 'is_v3', label: 'Stable Diffusion 3 / 3.5' },
  { arch: 'pixart', flag: 'is_pixart', label: 'PixArt-α' },
  { arch: 'pixart_sigma', flag: 'is_pixart_sigma', label: 'PixArt-Σ' },
  { arch: 'auraflow', flag: 'is_auraflow', label: 'AuraFlow' },
  { arch: 'vega', flag: 'is_vega', label: 'Segmind Vega' },
  { arch: 'ssd', flag: 'is_ssd', label: 'Segmind SSD-1B' },
];

/** A reference family graft knows by name only (no preset), or undefined. */
export function referenceOnlyFamily(model: unknown): { arch: string; label: string } | undefined {
  if (!isPlainObject(model)) return undefined;
  const arch = model.arch;
  if (typeof arch === 'string') return REFERENCE_ONLY_FAMILIES.find((f) => f.arch === arch.split(':')[0]);
  return REFERENCE_ONLY_FAMILIES.find((f) => f.flag !== undefined && model[f.flag] === true);
}

const LEGACY_FLAGS_WITHOUT_PRESET = REFERENCE_ONLY_FAMILIES.flatMap((f) => (f.flag ? [f.flag] : []));


export function presetById(family: string, presets: Preset[]): Preset | undefined {
  return presets.find((p) => p.family === family);
}

export function allArchNames(presets: Preset[]): string[] {
  return [...new Set(presets.flatMap((p) => [p.arch, ...p.aliases]))];
}
