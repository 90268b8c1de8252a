// graft prepare: a job's config.yaml to <job>/prepared/ (bucketed PNGs) and <job>/job.json, the resolved job
// the trainer reads. Re-running reuses every PNG whose source, bucket and crop did not change, and removes
// prepared files no item uses any more. job.json is written last and atomically: a failed run leaves the
// previous one (or none), never half of one.
import { availableParallelism } from 'node:os';
import { existsSync, mkdirSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { procPath } from '../config/document.js';
import { loadJobFile } from '../config/jobfile.js';
import { checkJob, refusal } from '../config/check.js';
import { expandHome, graftHome } from '../paths.js';
import { familyFor, loadPresets, type Preset } from '../presets.js';
import type { Unreadable } from '../datasets/scan.js';
import { writeFileAtomic } from '../util/atomic.js';
import { getAt } from '../util/objpath.js';
import { captionProblems, sizeProblem } from '../datasets/checks.js';
import { preservationCaption, replaceTrigger, withTrigger, type CaptionExt } from './captions.js';
import { collectDataset, prepareDatasetPixels, type CollectedDataset, type DatasetPixels } from './dataset.js';
import { PrepareError } from './errors.js';
import { adoptConfig, checkAdoptable, jobDirForConfig } from './jobdir.js';
import { buildJobJson, formatJobJson, resolveSamplePrompts, type JobDataset, type JobItem } from './jobjson.js';
import { Manifest } from './manifest.js';
import { resolveModel, type ModelResolver } from './model.js';
import { resolveSettings } from './settings.js';
import { TextTokenizers } from './textTokenizers.js';

export interface PrepareOptions {
  home?: string;
  presets?: Preset[];
  /** Images decoded at once (default: the number of cores). */
  concurrency?: number;
  /** zlib level of the prepared PNGs: speed over size, they are read once per encode. */
  pngCompression?: number;
  /** Progress and summary lines, as `graft prepare` prints them. */
  log?: (line: string) => void;
  /** How the model's files are found (default model.ts's resolveModel): tests give folders it does not know yet. */
  resolveModel?: ModelResolver;
  /** Stops a model download (what arrived is kept for the next run). */
  signal?: AbortSignal;
}

export interface DatasetSummary {
  folder: string;
  isReg: boolean;
  images: number;
  items: number;
  skipped: Unreadable[];
  videos: number;
  /** How many captions came from each source (txt, caption, json, jsonl). */
  captionSources: Record<string, number>;
  missingCaptions: number;
  /** What the images without a caption train on. */
  missingCaptionsUse: string;
  buckets: Record<string, number>;
  /** Items that train, but maybe not as meant: the file and what is wrong (checks.ts). */
  problems: { file: string; problems: string[] }[];
}

export interface PrepareSummary {
  configPath: string;
  jobDir: string;
  jobJson: string;
  datasets: DatasetSummary[];
  images: number;
  items: number;
  written: number;
  reused: number;
  removed: number;
  seconds: number;
}

const PREPARED_FILE = /^[0-9a-f]{32}_\d+x\d+\.png$/;
const TEMP_FILE = /^\.[0-9a-f]{32}_\d+x\d+\.png\.\d+\.\d+\.tmp$/;

/** The config a target names (a config file, or a job folder holding config.yaml), and the folder when one was named. */
function configOf(target: string): { config: string; folder?: string } {
  const full = resolve(expandHome(target));
  if (!existsSync(full)) throw new PrepareError(`no such file or folder: ${full}`);
  if (!statSync(full).isDirectory()) return { config: full };
  const inside = join(full, 'config.yaml');
  if (!existsSync(inside)) throw new PrepareError(`${full} has no config.yaml: give the job's config file (graft prepare <config.yaml>)`);
  return { config: inside, folder: full };
}

/** Remove prepared PNGs (and temporary files of an interrupted run) that no item uses. Only graft's own names. */
function removeStale(preparedDir: string, used: Set<string>): number {
  let removed = 0;
  for (const f of readdirSync(preparedDir)) {
    if ((PREPARED_FILE.test(f) && !used.has(f)) || TEMP_FILE.test(f)) {
      unlinkSync(join(preparedDir, f));
      removed++;
    }
  }
  return removed;
}

function histogram(items: { width: number; height: number }[]): Record<string, number> {
  const h: Record<string, number> = {};
  for (const it of items) h[`${it.width}x${it.height}`] = (h[`${it.width}x${it.height}`] ?? 0) + 1;
  return Object.fromEntries(Object.entries(h).sort(([a], [b]) => {
    const [aw, ah] = a.split('x').map(Number), [bw, bh] = b.split('x').map(Number);
    return bw! * bh! - aw! * ah! || bw! - aw!;
  }));
}

export async function prepareJob(target: string, opts: PrepareOptions = {}): Promise<PrepareSummary> {
  const started = Date.now();
  const log = opts.log ?? (() => {});
  const home = opts.home ?? graftHome();
  const presets = opts.presets ?? loadPresets();

  const { config: source, folder: namedFolder } = configOf(target);
  let loaded;
  try { loaded = loadJobFile(source); } catch (err) { throw new PrepareError((err as Error).message); }
  // Dataset folders are not checked here: collectDataset says what is wrong with each, in more detail.
  const why = refusal(source, checkJob(loaded.doc, presets));
  if (why) throw new PrepareError(why);
  const doc = loaded.doc;
  const user = getAt(doc, procPath()) as Record<string, unknown>;
  const name = String(getAt(doc, ['config', 'name']));
  // A job folder named on the command line is the job folder, wherever training_folder points.
  const jobDir = namedFolder ?? jobDirForConfig(source, doc, home);
  checkAdoptable(source, jobDir);

  const preset = familyFor(user.model, presets);
  const model = await (opts.resolveModel ?? resolveModel)(preset, user.model as Record<string, unknown>, source, { log, signal: opts.signal });
  const tokenizers = TextTokenizers.load(model.tokenizers);
  const settings = resolveSettings(user, preset);
  const train = settings.process.train as Record<string, unknown>;
  const trigger = typeof user.trigger_word === 'string' ? user.trigger_word.trim() : '';
  const divisibility = preset!.divisibility;

  // Every dataset's files and captions first: what would stop preparation stops it before pixel work.
  const collected: CollectedDataset[] = [];
  for (const d of settings.datasets) {
    const c = await collectDataset(resolve(dirname(source), expandHome(String(d.folder_path))), String(d.caption_ext ?? 'txt') as CaptionExt);
    requireSomeCaption(c, d, trigger);
    collected.push(c);
  }

  const preparedDir = join(jobDir, 'prepared');
  mkdirSync(preparedDir, { recursive: true });
  const manifest = Manifest.load(join(preparedDir, 'manifest.json'));
  const pixels: DatasetPixels[] = [];
  let lastReport = 0;
  for (const [di, d] of settings.datasets.entries()) {
    const resolutions = (Array.isArray(d.resolution) ? d.resolution : [d.resolution]).map(Number);
    log(`dataset ${di + 1}/${settings.datasets.length}: ${collected[di]!.folder} (resolutions ${resolutions.join(', ')}, divisibility ${divisibility})`);
    pixels.push(await prepareDatasetPixels(collected[di]!, {
      resolutions, divisibility, preparedDir, manifest,
      pngCompression: opts.pngCompression ?? 1,
      concurrency: opts.concurrency ?? Math.max(2, availableParallelism()),
      onImage: (done, total, written, reused) => {
        const now = Date.now();
        if (done === total || now - lastReport >= 1000) {
          lastReport = now;
          log(`prepared ${done}/${total} images (${written} PNGs written, ${reused} reused) ${((now - started) / 1000).toFixed(1)} s`);
        }
      },
    }));
  }

  const encode = (text: string) => tokenizers.encode(text);
  const captions: CaptionRules = {
    trigger,
    unloadTextEncoder: train.unload_text_encoder === true,
    dopClass: train.diff_output_preservation === true ? String(train.diff_output_preservation_class ?? 'person') : undefined,
  };
  const datasets: JobDataset[] = [];
  const summaries: DatasetSummary[] = [];
  for (const [di, d] of settings.datasets.entries()) {
    const { dataset, summary } = datasetOf(d, collected[di]!, pixels[di]!, jobDir, captions, tokenizers);
    datasets.push(dataset);
    summaries.push(summary);
  }

  const prompts = resolveSamplePrompts(settings, user, trigger, replaceTrigger, encode);
  const job = buildJobJson({ settings, user, name, jobDir, model, text: tokenizers.textSection(), datasets, prompts });
  manifest.save();
  const configPath = adoptConfig(source, doc, jobDir);
  const jobJson = join(jobDir, 'job.json');
  writeFileAtomic(jobJson, `${formatJobJson(job)}\n`);
  // Only after job.json points at the new files: a crash before leaves the old job whole.
  const removed = removeStale(preparedDir, new Set(datasets.flatMap((d) => d.items.map((it) => basename(it.image)))));

  const summary: PrepareSummary = {
    configPath, jobDir, jobJson, datasets: summaries,
    images: summaries.reduce((n, s) => n + s.images, 0),
    items: summaries.reduce((n, s) => n + s.items, 0),
    written: pixels.reduce((n, p) => n + p.written, 0),
    reused: pixels.reduce((n, p) => n + p.reused, 0),
    removed,
    seconds: (Date.now() - started) / 1000,
  };
  for (const line of summaryLines(summary)) log(line);
  return summary;
}

/**
 * Missing captions are counted and reported, and fall back to default_caption, else (non-regularization
 * datasets) to the trigger word alone. A dataset where no image has any caption and nothing to fall back to
 * would train on the empty prompt only: almost certainly a mistake (wrong caption_ext?), so it stops.
 */
function requireSomeCaption(c: CollectedDataset, d: Record<string, unknown>, trigger: string): void {
  const isReg = d.is_reg === true;
  const hasDefault = typeof d.default_caption === 'string' && d.default_caption.trim() !== '';
  if (hasDefault || (!isReg && trigger !== '') || c.images.some((im) => im.caption && im.caption.text !== '')) return;
  throw new PrepareError(`no captions in ${c.folder}: none of its ${c.images.length} images has a caption file (.${String(d.caption_ext ?? 'txt')}) or a metadata.jsonl line, ` +
    `and the dataset has no default_caption${isReg ? '' : ' and the job no trigger_word'}: add captions, or set default_caption`);
}

interface CaptionRules {
  trigger: string;
  unloadTextEncoder: boolean;
  /** Differential output preservation's class word, when it is on. */
  dopClass?: string;
}

/** A dataset's job.json entry: one item per (image, bucket, flip variant), every caption variant tokenized. */
function datasetOf(d: Record<string, unknown>, c: CollectedDataset, px: DatasetPixels, jobDir: string, rules: CaptionRules,
  tokenizers: TextTokenizers): { dataset: JobDataset; summary: DatasetSummary } {
  const encode = (text: string) => tokenizers.encode(text);
  const resolutions = (Array.isArray(d.resolution) ? d.resolution : [d.resolution]).map(Number);
  const problems: DatasetSummary['problems'] = [];
  const isReg = d.is_reg === true;
  const { trigger } = rules;
  const defaultCaption = typeof d.default_caption === 'string' ? d.default_caption.trim() : '';
  // Flip X and Flip Y each double the items (both: original, x, y and xy), as in the reference toolkit.
  const flips: [boolean, boolean][] = [[false, false]];
  if (d.flip_x === true) flips.push(...flips.map(([, y]) => [true, y] as [boolean, boolean]));
  if (d.flip_y === true) flips.push(...flips.map(([x]) => [x, true] as [boolean, boolean]));
  const repeats = Number(d.num_repeats ?? 1);
  const items: JobItem[] = [];
  const sources: Record<string, number> = {};
  let missing = 0;
  for (const im of px.images) {
    const own = im.caption && im.caption.text !== '' ? im.caption : undefined;
    if (own) sources[own.from] = (sources[own.from] ?? 0) + 1;
    else missing++;
    // With the text encoder unloaded only the trigger is ever encoded (the reference toolkit does the same);
    // regularization items never carry the trigger.
    const caption = rules.unloadTextEncoder ? (isReg ? '' : trigger) : withTrigger(own?.text ?? defaultCaption, trigger, isReg);
    const tokens = encode(caption);
    const itemProblems = [
      ...(im.caption?.problem ? [im.caption.problem] : []),
      ...captionProblems(caption, tokenizers.lengths(caption)),
      ...[sizeProblem(im.size, resolutions)].filter((p): p is string => p !== undefined),
    ];
    if (itemProblems.length > 0) problems.push({ file: im.file, problems: itemProblems });
    const dropout = encode(!isReg ? trigger : '');
    const dop = rules.dopClass !== undefined ? { dop_tokens: encode(preservationCaption(caption, trigger, rules.dopClass)) } : {};
    for (const b of im.buckets) {
      for (const [fx, fy] of flips) {
        items.push({
          image: relative(jobDir, b.image), key: b.key, width: b.bucket.width, height: b.bucket.height,
          flip_x: fx, flip_y: fy, repeats, source: im.source, caption, tokens, dropout_tokens: dropout, ...dop,
        });
      }
    }
  }
  const fallback = defaultCaption !== '' ? `default_caption "${defaultCaption}"` : !isReg && trigger !== '' ? `the trigger word "${trigger}" alone` : 'the empty prompt';
  return {
    dataset: {
      folder: c.folder,
      weight: Number(d.network_weight ?? 1),
      is_reg: isReg,
      caption_dropout_rate: Number(d.caption_dropout_rate ?? 0.05),
      items,
    },
    summary: {
      folder: c.folder, isReg, images: px.images.length, items: items.length, skipped: px.skipped, videos: c.videos,
      captionSources: sources, missingCaptions: missing, missingCaptionsUse: fallback, buckets: histogram(items), problems,
    },
  };
}

export function summaryLines(s: PrepareSummary): string[] {
  const lines: string[] = [];
  for (const d of s.datasets) {
    const buckets = Object.entries(d.buckets).map(([b, n]) => `${b} x${n}`).join(', ');
    const from = Object.entries(d.captionSources).map(([k, n]) => `${n} from ${k === 'jsonl' ? 'metadata.jsonl' : `.${k}`}`).join(', ');
    lines.push(`${d.isReg ? 'regularization ' : ''}dataset ${d.folder}: ${d.images} images -> ${d.items} items; buckets ${buckets}${from ? `; captions ${from}` : ''}`);
    if (d.missingCaptions > 0) lines.push(`  ${d.missingCaptions} image${d.missingCaptions === 1 ? '' : 's'} without a caption: trained on ${d.missingCaptionsUse}`);
    if (d.videos > 0) lines.push(`  ${d.videos} video${d.videos === 1 ? '' : 's'} skipped: video datasets are not prepared yet`);
    if (d.problems.length > 0) {
      lines.push(`  ${d.problems.length} item${d.problems.length === 1 ? '' : 's'} to look at (they train, maybe not as meant):`);
      for (const p of d.problems) for (const what of p.problems) lines.push(`    ${p.file}: ${what}`);
    }
    if (d.skipped.length > 0) {
      lines.push(`  ${d.skipped.length} file${d.skipped.length === 1 ? '' : 's'} skipped:`);
      for (const u of d.skipped) lines.push(`    ${u.file}: ${u.reason}`);
    }
  }
  lines.push(`prepared ${s.images} images into ${s.items} items in ${s.seconds.toFixed(1)} s: ${s.written} PNGs written, ${s.reused} reused, ${s.removed} stale removed`);
  lines.push(`wrote ${s.jobJson}`);
  return lines;
}
