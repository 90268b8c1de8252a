// The New Job screen: panels on the left, the fields of every panel in one list, the YAML preview on the right
// (or behind `p` on narrow terminals). Keys only; state lives in useJobForm.
//
// Why not ink-form (the design card names it; 2.0.2 read for this): its value is a flat object keyed by field
// name, where this form edits a YAML document in place (nested paths, keys it does not know kept, dataset and
// prompt blocks that are added and removed, so the fields change with the document); validation is
// `required`, a regex and min/max per field, where this form needs rules across fields, warnings and "not
// supported yet" at the field they concern; a field's help shows only once it is expanded, and sections are
// tabs with one visible at a time. It moves focus with Ink's focus manager (Up/Down only; Tab is the focus
// manager's), lays out at 100% without fixed-width cells (the 80x24 wrap this screen guards against), and
// depends on ink-select-input 5, which needs an override to run on Ink 6. Its pickers have no path
// completion, and there is no place for the YAML preview or the issues list. Wrapping all of that would be
// a rewrite of it; the form here is fields.ts (the model) and this screen (rendering and keys).
import { Box, Text, useInput } from 'ink';
import { useMemo, useState } from 'react';
import { dumpJobYaml } from '../src/config/document.js';
import { planSummary } from '../src/config/memoryPlan.js';
import {
  addDataset, addPrompt, displayValue, duplicateDataset, parseInput, duplicatePrompt, editText, issuesFor, PANELS,
  removeDataset, removePrompt, type Field, type Option,
} from '../src/config/fields.js';
import type { JobForm } from '../src/hooks/useJobForm.js';
import type { PlanState } from '../src/hooks/useMemoryPlan.js';
import { useKeyState } from '../src/hooks/useKeyState.js';
import { completePath } from '../src/util/complete.js';
import { SelectList } from './components/SelectList.js';
import { MessageLine, StatusBar, type Hint } from './components/StatusBar.js';
import { TextInput } from './components/TextInput.js';

export const NEW_JOB_KEYS: Hint[] = [
  ['↑↓ j/k', 'move between fields'],
  ['PgUp PgDn', 'a page of fields up / down'],
  ['Home End', 'first / last field'],
  ['Tab S-Tab', 'next / previous panel'],
  ['Enter', 'edit, toggle or choose'],
  ['←→ h/l', 'change a choice, move in Resolutions'],
  ['Space', 'toggle'],
  ['s', 'save config.yaml and register a draft'],
  ['o', 'load a YAML file'],
  ['n', 'new job (press twice)'],
  ['p', 'YAML preview'],
  ['i', 'all errors, warnings and ignored keys'],
  ['a d x', 'add / duplicate / remove dataset or prompt'],
  ['Esc', 'cancel an edit; back'],
];

type Overlay =
  | { kind: 'edit'; field: Field; text: string; candidates: string[] }
  | { kind: 'pick'; field: Field; options: Option[] }
  | { kind: 'load'; text: string; candidates: string[] }
  | { kind: 'issues' }
  | { kind: 'preview' };

const TYPE_PATH = '\u0000type';

interface Row {
  kind: 'panel' | 'group' | 'field';
  text: string;
  fieldIndex?: number;
}

export interface NewJobProps {
  form: JobForm;
  active: boolean;
  width: number;
  height: number;
  setCapture: (capturing: boolean) => void;
}

export function NewJob({ form, active, width, height, setCapture }: NewJobProps) {
  const { fields, errors, unsupported, warnings, doc } = form;
  // Focus and overlay are key states: a key that comes before the previous one is drawn still sees
  // where that key moved the focus and whether it opened an input (useKeyState).
  const [focus, setFocus, focusNow] = useKeyState(0);
  const [multiCursor, setMultiCursor] = useState(0);
  const [overlay, setOverlayState, overlayNow] = useKeyState<Overlay | undefined>(undefined);
  const [showPreview, setShowPreview] = useState(true);
  const [confirmNew, setConfirmNew] = useState(false);
  const [scroll, setScroll] = useState(0);

  // The frame's screen keys stop the moment an input or picker opens, not a render later.
  const setOverlay = (next: Overlay | undefined | ((o: Overlay | undefined) => Overlay | undefined)) => {
    setCapture(setOverlayState(next) !== undefined);
  };
  const index = Math.min(focus, fields.length - 1);
  const field = fields[index]!;
  const now = () => {
    const i = Math.min(focusNow(), fields.length - 1);
    return { index: i, field: fields[i]! };
  };
  const allIssues = useMemo(() => [...errors, ...unsupported, ...warnings], [errors, unsupported, warnings]);
  const yamlLines = useMemo(() => dumpJobYaml(doc).split('\n'), [doc]);

  const wide = width >= 120;
  const panelW = 16;
  const previewW = wide && showPreview ? Math.floor(width * 0.4) : 0;
  const formW = width - panelW - previewW;
  const bottomRows = 5;
  const mainH = Math.max(4, height - bottomRows);

  const panelStarts = PANELS.map((p) => fields.findIndex((f) => f.panel === p.id));
  const moveTo = (i: number) => { setFocus(Math.max(0, Math.min(fields.length - 1, i))); setMultiCursor(0); };
  const jumpPanel = (dir: 1 | -1) => {
    const starts = panelStarts.filter((s) => s >= 0).sort((a, b) => a - b);
    const cur = now().field.panel;
    const curStart = fields.findIndex((f) => f.panel === cur);
    const pos = starts.indexOf(curStart);
    moveTo(starts[(pos + dir + starts.length) % starts.length]!);
  };

  const blockAction = (action: 'add' | 'dup' | 'remove') => {
    const { field } = now();
    const b = field.block;
    if (field.panel === 'datasets') {
      const i = b?.index ?? 0;
      if (action === 'add') form.change(addDataset(doc, i));
      if (action === 'dup') form.change(duplicateDataset(doc, i));
      if (action === 'remove') {
        if (form.fields.filter((f) => f.id.endsWith('.folder_path')).length <= 1) form.setMessage({ level: 'warning', text: 'a job needs at least one dataset; edit this one instead' });
        else form.change(removeDataset(doc, i));
      }
    } else if (field.panel === 'sample') {
      const j = b?.kind === 'prompt' ? b.index : -1;
      if (action === 'add') form.change(addPrompt(doc, j < 0 ? Number.MAX_SAFE_INTEGER : j));
      if (action === 'dup' && j >= 0) form.change(duplicatePrompt(doc, j));
      if (action === 'remove' && j >= 0) form.change(removePrompt(doc, j));
    } else {
      form.setMessage({ level: 'warning', text: 'a / d / x work in the DATASETS and SAMPLE panels' });
    }
  };

  const cycle = (dir: 1 | -1) => {
    const { field } = now();
    if (field.kind === 'bool') return form.setField(field, !(field.get(doc) === true));
    if (field.kind === 'select' && field.options && field.options.length > 0) {
      const cur = field.options.findIndex((o) => o.value === field.get(doc));
      const next = field.options[(cur + dir + field.options.length) % field.options.length]!;
      return form.setField(field, next.value);
    }
    if (field.kind === 'multi' && field.options) setMultiCursor((c) => (c + dir + field.options!.length) % field.options!.length);
    return undefined;
  };

  const toggleMulti = () => {
    const { field } = now();
    const opt = field.options?.[multiCursor];
    if (!opt) return;
    const cur = (field.get(doc) as unknown[]).filter((x): x is number => typeof x === 'number');
    const v = Number(opt.value);
    const next = cur.includes(v) ? cur.filter((x) => x !== v) : [...cur, v].sort((a, b) => a - b);
    form.setField(field, next);
  };

  const activate = () => {
    const { field } = now();
    switch (field.kind) {
      case 'bool': return form.setField(field, !(field.get(doc) === true));
      case 'multi': return toggleMulti();
      case 'select': return setOverlay({ kind: 'pick', field, options: field.options ?? [] });
      case 'folder':
        if (field.options && field.options.length > 0) {
          return setOverlay({ kind: 'pick', field, options: [...field.options, { value: TYPE_PATH, label: 'Type a path...' }] });
        }
        return setOverlay({ kind: 'edit', field, text: editText(field, field.get(doc)), candidates: [] });
      default:
        return setOverlay({ kind: 'edit', field, text: editText(field, field.get(doc)), candidates: [] });
    }
  };

  useInput((input, key) => {
    const { index, field } = now();
    const open = overlayNow();
    if (open?.kind === 'issues' || open?.kind === 'preview') {
      if (key.escape || input === 'q' || (open.kind === 'issues' && input === 'i') || (open.kind === 'preview' && input === 'p')) setOverlay(undefined);
      if (key.upArrow || input === 'k') setScroll((s) => Math.max(0, s - 1));
      if (key.downArrow || input === 'j') setScroll((s) => s + 1);
      if (key.pageUp) setScroll((s) => Math.max(0, s - mainH));
      if (key.pageDown) setScroll((s) => s + mainH);
      return;
    }
    if (open) return; // the input or picker has the keys
    if (form.message) form.setMessage(undefined); // a message answers the previous key only
    if (input !== 'n') setConfirmNew(false);
    if (key.upArrow || input === 'k') return moveTo(index - 1);
    if (key.downArrow || input === 'j') return moveTo(index + 1);
    if (key.pageUp) return moveTo(index - mainH);
    if (key.pageDown) return moveTo(index + mainH);
    if (key.home) return moveTo(0);
    if (key.end) return moveTo(fields.length - 1);
    if (key.tab) return jumpPanel(key.shift ? -1 : 1);
    if (key.leftArrow || input === 'h') return cycle(-1);
    if (key.rightArrow || input === 'l') return cycle(1);
    if (key.return) return activate();
    if (input === ' ') return field.kind === 'multi' ? toggleMulti() : field.kind === 'bool' ? cycle(1) : undefined;
    if (input === 's') { form.save(); return undefined; }
    if (input === 'o') return setOverlay({ kind: 'load', text: form.source ?? '', candidates: [] });
    if (input === 'p') {
      if (wide) return setShowPreview((v) => !v);
      setScroll(0);
      return setOverlay({ kind: 'preview' });
    }
    if (input === 'i') { setScroll(0); return setOverlay({ kind: 'issues' }); }
    if (input === 'a') return blockAction('add');
    if (input === 'd') return blockAction('dup');
    if (input === 'x') return blockAction('remove');
    if (input === 'n') {
      if (confirmNew || !form.dirty) { setConfirmNew(false); form.reset(); moveTo(0); return undefined; }
      setConfirmNew(true);
      form.setMessage({ level: 'warning', text: 'unsaved changes: press n again to start a new job, any other key to keep editing' });
    }
    return undefined;
  }, { isActive: active });

  if (!active) return null;

  // ---- rows of the form -------------------------------------------------------------------------
  const rows: Row[] = [];
  let lastPanel = '', lastGroup: string | undefined;
  fields.forEach((f, i) => {
    if (f.panel !== lastPanel) {
      rows.push({ kind: 'panel', text: PANELS.find((p) => p.id === f.panel)!.title });
      lastPanel = f.panel;
      lastGroup = undefined;
    }
    if (f.group && f.group !== lastGroup) rows.push({ kind: 'group', text: f.group });
    lastGroup = f.group;
    rows.push({ kind: 'field', text: f.label, fieldIndex: i });
  });
  const focusRow = rows.findIndex((r) => r.fieldIndex === index);
  const start = Math.max(0, Math.min(focusRow - Math.floor(mainH / 3), rows.length - mainH));
  const visibleRows = rows.slice(start, start + mainH);
  const labelW = Math.min(34, Math.max(14, Math.floor(formW * 0.42)));
  // The form's left padding (1), the cursor and mark with a space (3), the gap (1): a value one column
  // wider wrapped its row, and the frame pushed the tab bar off the top (Name or Path of Wan 2.2 at 80x24).
  const valueW = Math.max(8, formW - labelW - 5);

  const editing = overlay?.kind === 'edit' ? overlay : undefined;
  const liveIssues = editing ? issuesFor(editing.field, form.previewIssues(editing.field, editing.text)) : issuesFor(field, allIssues);

  const renderValue = (f: Field, focused: boolean) => {
    if (editing && editing.field.id === f.id) {
      return (
        <TextInput
          key={editing.field.id}
          initial={editing.text}
          width={valueW}
          onChange={(text) => setOverlay((o) => (o?.kind === 'edit' ? { ...o, text } : o))}
          onSubmit={(text) => { form.setField(f, parseInput(f, text)); setOverlay(undefined); }}
          onCancel={() => setOverlay(undefined)}
          onComplete={f.kind === 'folder' ? (v) => completePath(v, true) : undefined}
          onCandidates={(candidates) => setOverlay((o) => (o?.kind === 'edit' ? { ...o, candidates } : o))}
        />
      );
    }
    if (f.kind === 'multi') {
      const chosen = new Set((f.get(doc) as unknown[]).map(String));
      return (
        <Text wrap="truncate-end">
          {(f.options ?? []).map((o, i) => (
            <Text key={o.value} inverse={focused && i === multiCursor} color={chosen.has(o.value) ? 'green' : undefined} dimColor={!chosen.has(o.value)}>
              {chosen.has(o.value) ? `[${o.label}]` : ` ${o.label} `}
            </Text>
          ))}
        </Text>
      );
    }
    const v = f.get(doc);
    const text = displayValue(f, v);
    const isSelect = f.kind === 'select';
    return <Text wrap="truncate-end" dimColor={text === ''}>{text === '' ? '(empty)' : isSelect && focused ? `< ${text} >` : text}</Text>;
  };

  const panelList = (
    <Box flexDirection="column" width={panelW} height={mainH} borderStyle="single" borderRight borderTop={false} borderBottom={false} borderLeft={false}>
      {PANELS.filter((p) => panelStarts[PANELS.indexOf(p)]! >= 0).map((p) => {
        const pf = fields.filter((f) => f.panel === p.id);
        const nErr = new Set(errors.flatMap((e) => pf.filter((f) => issuesFor(f, [e]).length > 0).map(() => e.message))).size;
        const current = field.panel === p.id;
        return (
          <Text key={p.id} inverse={current} wrap="truncate-end">
            {p.title.padEnd(12).slice(0, 12)}{nErr > 0 ? <Text color="red">{` ✗${nErr}`}</Text> : ''}
          </Text>
        );
      })}
      <Text> </Text>
      <Text bold>MEMORY</Text>
      {memoryLines(form.memory).map((l, i) => <Text key={i} color={l.color} dimColor={l.dim} wrap="truncate-end">{l.text}</Text>)}
    </Box>
  );

  const formList = (
    <Box flexDirection="column" width={formW} height={mainH} paddingLeft={1}>
      {visibleRows.map((r, i) => {
        if (r.kind === 'panel') return <Text key={`p${start + i}`} bold color="cyan" wrap="truncate-end">{r.text}</Text>;
        if (r.kind === 'group') return <Text key={`g${start + i}`} color="magenta" wrap="truncate-end">{`-- ${r.text} --`}</Text>;
        const f = fields[r.fieldIndex!]!;
        const focused = r.fieldIndex === index;
        const fi = issuesFor(f, allIssues);
        const mark = fi.some((x) => x.level === 'error') ? <Text color="red">✗</Text> : fi.some((x) => x.level === 'unsupported') ? <Text color="magenta">⊘</Text> : fi.length > 0 ? <Text color="yellow">!</Text> : <Text> </Text>;
        return (
          <Box key={f.id} height={1}>
            <Text>{focused ? <Text color="cyan">{'>'}</Text> : ' '}{mark} </Text>
            <Box width={labelW}><Text inverse={focused} wrap="truncate-end">{f.label.padEnd(labelW).slice(0, labelW)}</Text></Box>
            <Text> </Text>
            <Box width={valueW}>{renderValue(f, focused)}</Box>
          </Box>
        );
      })}
    </Box>
  );

  const previewPane = (w: number, h: number, scrollTo: number | undefined) => {
    const target = scrollTo ?? 0;
    const top = scrollTo === undefined ? Math.min(scroll, Math.max(0, yamlLines.length - h + 2)) : Math.max(0, Math.min(target - Math.floor(h / 3), yamlLines.length - h + 2));
    return (
      <Box flexDirection="column" width={w} height={h} borderStyle="single" borderColor="gray" paddingX={1}>
        <Text bold wrap="truncate-end">config.yaml preview <Text dimColor>(exactly what s saves)</Text></Text>
        {yamlLines.slice(top, top + h - 3).map((l, i) => (
          <Text key={i} wrap="truncate-end" inverse={scrollTo !== undefined && top + i === target}>{l === '' ? ' ' : l}</Text>
        ))}
      </Box>
    );
  };

  let main: React.ReactNode;
  if (overlay?.kind === 'pick') {
    main = (
      <Box width={width} height={mainH}>
        {panelList}
        <SelectList
          title={overlay.field.label}
          options={overlay.options}
          initialValue={String(overlay.field.get(doc) ?? '')}
          height={mainH}
          width={width - panelW}
          onSelect={(v) => {
            if (v === TYPE_PATH) return setOverlay({ kind: 'edit', field: overlay.field, text: editText(overlay.field, overlay.field.get(doc)), candidates: [] });
            form.setField(overlay.field, v);
            return setOverlay(undefined);
          }}
          onCancel={() => setOverlay(undefined)}
        />
      </Box>
    );
  } else if (overlay?.kind === 'preview') {
    main = <Box height={mainH}>{previewPane(width, mainH, undefined)}</Box>;
  } else if (overlay?.kind === 'issues') {
    const lines: { color: string; text: string }[] = [
      ...errors.map((e) => ({ color: 'red', text: `✗ ${e.message}` })),
      ...unsupported.map((u) => ({ color: 'magenta', text: `⊘ ${u.message}` })),
      ...warnings.map((w) => ({ color: 'yellow', text: `! ${w.message}` })),
      ...form.ignored.map((k) => ({ color: 'gray', text: `ignored (kept on save): ${k}` })),
    ];
    if (lines.length === 0) lines.push({ color: 'green', text: 'no errors, no warnings' });
    main = (
      <Box flexDirection="column" width={width} height={mainH} borderStyle="single" borderColor="gray" paddingX={1}>
        <Text bold>{errors.length} error{errors.length === 1 ? '' : 's'}, {unsupported.length} not supported yet, {warnings.length} warning{warnings.length === 1 ? '' : 's'} <Text dimColor>(↑↓ scroll, Esc close)</Text></Text>
        {lines.slice(scroll, scroll + mainH - 3).map((l, i) => <Text key={i} color={l.color} wrap="wrap">{l.text}</Text>)}
      </Box>
    );
  } else if (overlay?.kind === 'load') {
    main = (
      <Box flexDirection="column" width={width} height={mainH} borderStyle="single" borderColor="cyan" paddingX={1}>
        <Text bold>Load a job YAML (reference toolkit layout) <Text dimColor>Tab completes, Enter loads, Esc cancels</Text></Text>
        <Box>
          <Text>path: </Text>
          <TextInput
            initial={overlay.text}
            width={width - 12}
            onChange={(text) => setOverlay((o) => (o?.kind === 'load' ? { ...o, text } : o))}
            onSubmit={(text) => { if (form.load(text)) { moveTo(0); setOverlay(undefined); } }}
            onCancel={() => setOverlay(undefined)}
            onComplete={(v) => completePath(v, false)}
            onCandidates={(candidates) => setOverlay((o) => (o?.kind === 'load' ? { ...o, candidates } : o))}
          />
        </Box>
        {overlay.candidates.slice(0, mainH - 4).map((c) => <Text key={c} dimColor>{c}</Text>)}
      </Box>
    );
  } else {
    const leaf = field.paths[0]!.split('.').pop()!.replace(/\[\d+\]$/, '');
    const marker = yamlLines.findIndex((l, i) => i >= markerHint(yamlLines, field) && l.trimStart().startsWith(`${leaf}:`));
    main = (
      <Box width={width} height={mainH}>
        {panelList}
        {formList}
        {previewW > 0 ? previewPane(previewW, mainH, marker >= 0 ? marker : undefined) : null}
      </Box>
    );
  }

  // On Model Architecture, the chosen family's own line: what it is and what graft does with it.
  const help = editing && editing.candidates.length > 0
    ? `completions: ${editing.candidates.join('  ')}`
    : field.id === 'model.arch' && form.preset
      ? `${form.preset.label}: ${form.preset.help}`
      : `${field.label}: ${field.help}`;
  const issueLines = liveIssues.slice(0, 2);
  // Beside the QUANTIZATION panel: what the job will need as its settings change.
  const planLine = field.panel === 'quantization' && issueLines.length === 0 && 'plan' in form.memory ? planSummary(form.memory.plan) : undefined;
  const summary = `issues ✗${errors.length}${unsupported.length ? ` ⊘${unsupported.length}` : ''} !${warnings.length}`;
  const hints: Hint[] = overlay?.kind === 'edit'
    ? [['Enter', 'accept'], ['Esc', 'cancel'], ...(field.kind === 'folder' ? [['Tab', 'complete'] as Hint] : [])]
    : [['s', 'save'], ['o', 'load'], ['p', 'yaml'], ['i', summary], ['a/d/x', 'blocks'], ['?', 'help'], ['q', 'back']];

  return (
    <Box flexDirection="column" width={width} height={height}>
      {main}
      <Box height={1} width={width}><Text color="cyan" wrap="truncate-end">{help}</Text></Box>
      <Box height={2} width={width} overflow="hidden" flexDirection="column">
        {planLine ? <Text color={'plan' in form.memory && form.memory.plan.fits ? 'green' : 'red'} wrap="wrap">{`memory: ${planLine}`}</Text> : null}
        {issueLines.length === 0 && !planLine ? <Text> </Text> : issueLines.map((iss, k) => (
          <Text key={k} color={iss.level === 'error' ? 'red' : iss.level === 'unsupported' ? 'magenta' : 'yellow'} wrap="wrap">{`${iss.level === 'error' ? '✗' : iss.level === 'unsupported' ? '⊘' : '!'} ${iss.message}`}</Text>
        ))}
      </Box>
      <MessageLine
        level={form.message?.level ?? (unsupported.length ? 'error' : undefined)}
        text={form.message?.text ?? (unsupported.length
          ? `⊘ ${unsupported[0]!.message.replace(/^not supported yet: /, 'graft cannot train this job yet: ')} (s saves it; the queue refuses it)`
          : form.source ? `editing ${form.source}${form.dirty ? ' (unsaved)' : ''}` : `new job${form.dirty ? ' (unsaved)' : ''}`)}
        width={width}
      />
      <StatusBar hints={hints} width={width} />
    </Box>
  );
}

/** The memory plan under the panel list: the peak against what is free, or why there is none. */
function memoryLines(m: PlanState): { text: string; color?: string; dim?: boolean }[] {
  if ('pending' in m) return [{ text: '…', dim: true }];
  if ('none' in m) return [{ text: 'no estimate', dim: true }];
  if ('error' in m) return [{ text: 'unknown', color: 'yellow' }];
  const g = (b: number) => `${(b / 2 ** 30).toFixed(b >= 10 * 2 ** 30 ? 0 : 1)}G`;
  const p = m.plan;
  return [
    { text: `~${g(p.total)} ${p.fits ? 'fits' : 'too big'}`, color: p.fits ? 'green' : 'red' },
    { text: p.available > 0 ? `of ${g(p.available)} free` : 'free: unknown', dim: true },
  ];
}

/** Where to start looking for a field's key in the YAML: after its section header, so "width" finds the right one. */
function markerHint(lines: string[], field: Field): number {
  const parts = field.paths[0]!.split('.');
  let from = 0;
  for (const part of parts.slice(0, -1)) {
    const name = part.replace(/\[\d+\]$/, '');
    const at = lines.findIndex((l, i) => i >= from && l.trimStart().replace(/^- /, '').startsWith(`${name}:`));
    if (at >= 0) from = at;
    const m = /\[(\d+)\]$/.exec(part);
    if (m && at >= 0) {
      // Skip to the n-th list item under this key.
      let seen = -1;
      for (let i = at + 1; i < lines.length; i++) {
        if (lines[i]!.trimStart().startsWith('- ')) seen++;
        if (seen === Number(m[1])) { from = i; break; }
      }
    }
  }
  return from;
}
