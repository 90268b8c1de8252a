// State of the New Job form: the YAML document, its issues, saving and loading. No rendering here.
import { useEffect, useMemo, useState } from 'react';
import { applyPreset, newJobDoc, procPath, type JobDoc } from '../config/document.js';
import { buildFields, datasetBlocks, parseInput, type Field, type NamedDataset } from '../config/fields.js';
import { loadJobFile, saveJob, SaveRefused, type Loaded } from '../config/jobfile.js';
import { validateJob, type Issue } from '../config/validate.js';
import { trains, unsupportedIssues } from '../config/support.js';
import { jobWarnings } from '../config/warnings.js';
import { countMedia } from '../datasets/scan.js';
import { useMemoryPlan } from './useMemoryPlan.js';
import type { Gpu } from '../gpu.js';
import { defaultTrainingFolder } from '../paths.js';
import { familyFor, type Preset } from '../presets.js';
import type { Store } from '../queue/store.js';
import { getAt } from '../util/objpath.js';

export interface FormMessage {
  level: 'info' | 'warning' | 'error';
  text: string;
}

export interface JobFormOptions {
  presets: Preset[];
  store: Store;
  initial?: Loaded;
  gpus?: Gpu[];
  datasets: NamedDataset[];
  onSaved?: () => void;
}

function loadedMessage(l: Loaded): FormMessage {
  const n = l.ignored.length;
  return n === 0
    ? { level: 'info', text: `loaded ${l.path}` }
    : { level: 'warning', text: `loaded; ${n} key${n === 1 ? '' : 's'} graft ignores (kept on save): ${l.ignored.join(', ')}. i lists them. ${l.path}` };
}

export function useJobForm(opts: JobFormOptions) {
  const { presets, store } = opts;
  // A new job starts on the built-in demo model: it trains on any machine in minutes, and the Model
  // Architecture field is one key away from FLUX.1, the other family graft trains.
  const fresh = () => newJobDoc(presets.find((p) => p.family === 'graft_tiny') ?? presets.find(trains) ?? presets[0]!, defaultTrainingFolder(store.home));
  const [doc, setDoc] = useState<JobDoc>(() => opts.initial?.doc ?? fresh());
  const [source, setSource] = useState<string | undefined>(opts.initial?.path);
  const [dirty, setDirty] = useState(false);
  const [message, setMessage] = useState<FormMessage | undefined>(() => (opts.initial ? loadedMessage(opts.initial) : undefined));
  const [datasetSizes, setDatasetSizes] = useState<Record<string, number>>({});
  // Keys of the loaded file that graft does not use: reported once on load, listed under i.
  const [ignored, setIgnored] = useState<string[]>(opts.initial?.ignored ?? []);

  const preset = familyFor(getAt(doc, procPath('model')), presets);
  const fields = useMemo(() => buildFields(doc, { presets, datasets: opts.datasets }), [doc, presets, opts.datasets]);
  const errors = useMemo(() => validateJob(doc, presets), [doc, presets]);
  const unsupported = useMemo(() => unsupportedIssues(doc, presets), [doc, presets]);
  const warnings = useMemo(() => jobWarnings(doc, { preset, presets, gpus: opts.gpus, datasetSizes }), [doc, preset, presets, opts.gpus, datasetSizes]);
  // What the job will need on its device, from the trainer's own memory plan.
  const memory = useMemoryPlan(doc, presets);

  // Count the images of each dataset folder once, for the effective-batch warning.
  const folders = datasetBlocks(doc).map((b) => b.folder_path).filter((f): f is string => typeof f === 'string' && f !== '');
  const folderKey = folders.join('\n');
  useEffect(() => {
    let live = true;
    for (const folder of folders) {
      if (folder in datasetSizes) continue;
      void countMedia(folder).then((n) => {
        if (live) setDatasetSizes((s) => ({ ...s, [folder]: n ?? -1 })); // -1: the folder cannot be read
      });
    }
    return () => { live = false; };
  }, [folderKey]);

  const change = (next: JobDoc) => {
    setDoc(next);
    setDirty(true);
  };

  return {
    doc, preset, fields, errors, unsupported, warnings, message, source, dirty, presets, ignored, memory,
    setMessage,
    change,
    setField(field: Field, value: unknown) {
      change(field.set(doc, value));
    },
    /** Issues the document would have with this text typed into the field (validation as you type). */
    previewIssues(field: Field, text: string): Issue[] {
      return validateJob(field.set(doc, parseInput(field, text)), presets);
    },
    save(): boolean {
      try {
        const saved = saveJob(doc, presets, store);
        setSource(saved.configPath);
        setDirty(false);
        setMessage({ level: 'info', text: saved.extendedFrom !== undefined
          ? `saved ${saved.configPath}: job #${saved.job.id} trains on from step ${saved.extendedFrom} when resumed (r in the Training Queue or the Job monitor)`
          : `saved ${saved.configPath} (draft #${saved.job.id} in the Training Queue)` });
        opts.onSaved?.();
        return true;
      } catch (err) {
        setMessage({ level: 'error', text: err instanceof SaveRefused ? err.message : `cannot save: ${(err as Error).message}` });
        return false;
      }
    },
    load(path: string): boolean {
      try {
        const loaded = loadJobFile(path);
        setDoc(loaded.doc);
        setIgnored(loaded.ignored);
        setSource(loaded.path);
        setDirty(false);
        setMessage(loadedMessage(loaded));
        return true;
      } catch (err) {
        setMessage({ level: 'error', text: (err as Error).message });
        return false;
      }
    },
    reset() {
      setDoc(fresh());
      setIgnored([]);
      setSource(undefined);
      setDirty(false);
      setMessage({ level: 'info', text: 'new job' });
    },
    choosePreset(family: string) {
      const next = presets.find((p) => p.family === family);
      if (next) change(applyPreset(doc, next, preset));
    },
  };
}

export type JobForm = ReturnType<typeof useJobForm>;
