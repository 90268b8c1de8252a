// The Datasets screen: named dataset folders, their scan (counts, buckets, captions, unreadable files)
// and a thumbnail preview with its caption. Nothing on disk is modified.
import { Box, Text, useInput } from 'ink';
import { basename, join, resolve } from 'node:path';
import { useEffect, useMemo, useState } from 'react';
import { bucketHistogram } from '../src/datasets/buckets.js';
import { captionCounter, type CaptionCounter } from '../src/datasets/captionLength.js';
import { scanProblems } from '../src/datasets/checks.js';
import { folderProblem } from '../src/datasets/folder.js';
import type { Preset } from '../src/presets.js';
import { readCaption, type ScanResult } from '../src/datasets/scan.js';
import { renderThumbnail } from '../src/datasets/thumbnail.js';
import type { DatasetsState } from '../src/hooks/useDatasets.js';
import { expandHome } from '../src/paths.js';
import { completePath } from '../src/util/complete.js';
import { MessageLine, StatusBar, type Hint } from './components/StatusBar.js';
import { TextInput } from './components/TextInput.js';

export const DATASETS_KEYS: Hint[] = [
  ['↑↓ j/k', 'choose a dataset (or a file in the file view)'],
  ['a', 'add a dataset: folder (Tab completes), then its name'],
  ['Enter r', 'scan again'],
  ['g', 'mark / unmark as regularization'],
  ['f', 'file view: thumbnail and caption of each file'],
  ['b', 'bucket resolutions of the histogram'],
  ['m', 'bucket divisibility 8 / 16 / 32'],
  ['x', 'forget the dataset (press twice; the folder is not touched)'],
  ['PgUp PgDn', 'a page of files (file view)'],
  ['Esc', 'leave the file view; back'],
];

type Overlay = { kind: 'folder'; text: string; candidates: string[] } | { kind: 'name'; folder: string; text: string } | { kind: 'buckets'; text: string };

export interface DatasetsProps {
  ds: DatasetsState;
  presets: Preset[];
  active: boolean;
  width: number;
  height: number;
  setCapture: (capturing: boolean) => void;
}

const DIVISIBILITIES = [8, 16, 32];

function bar(fraction: number, width: number): string {
  const n = Math.round(Math.max(0, Math.min(1, fraction)) * width);
  return '█'.repeat(n) + '░'.repeat(width - n);
}

export function Datasets({ ds, presets, active, width, height, setCapture }: DatasetsProps) {
  const [selected, setSelected] = useState(0);
  const [overlay, setOverlay] = useState<Overlay | undefined>();
  const [filesView, setFilesView] = useState(false);
  const [fileIndex, setFileIndex] = useState(0);
  const [resolutions, setResolutions] = useState<number[]>([512, 768, 1024]);
  const [divisibility, setDivisibility] = useState(16);
  const [message, setMessage] = useState<{ level: 'info' | 'warning' | 'error'; text: string } | undefined>();
  const [confirmRemove, setConfirmRemove] = useState(false);
  const [thumb, setThumb] = useState<{ key: string; text: string; caption?: string } | undefined>();

  useEffect(() => { setCapture(overlay !== undefined || filesView); }, [overlay, filesView, setCapture]);

  // Caption lengths are measured with the tokenizer of the family graft trains (loaded once, when shown).
  const [counter, setCounter] = useState<CaptionCounter | undefined>();
  useEffect(() => {
    if (!active || counter) return undefined;
    let live = true;
    void captionCounter(presets).then((c) => { if (live && c) setCounter(c); });
    return () => { live = false; };
  }, [active]);

  const current = ds.list[Math.min(selected, ds.list.length - 1)];
  const scan = current ? ds.scans[current.name] : undefined;
  const result: ScanResult | undefined = scan?.status === 'done' ? scan.result : undefined;

  // Scan each dataset the first time it is shown.
  useEffect(() => {
    if (active && current && !scan) ds.scan(current.name, current.folder);
  }, [active, current?.name, scan === undefined]);

  const wide = width >= 140;
  const listW = Math.min(28, Math.max(20, Math.floor(width * 0.25)));
  const detailW = width - listW - 1;
  const mainH = Math.max(6, height - 2);
  // Thumbnails stay small enough to draw quickly and leave room for the caption.
  const thumbW = Math.min(48, wide ? Math.floor(detailW / 2) - 2 : Math.max(16, detailW - 30));
  const thumbH = Math.min(24, Math.max(4, mainH - 6));
  const item = result?.items[Math.min(fileIndex, result.items.length - 1)];
  const problems = useMemo(() => (result ? scanProblems(result.items, resolutions, counter) : []), [result, resolutions, counter]);
  const itemProblems = item ? problems.find((p) => p.file === item.file)?.problems ?? [] : [];

  // Thumbnail and caption of the selected file (file view, or always on wide screens).
  const showPreview = (filesView || wide) && item !== undefined && current !== undefined;
  const thumbKey = showPreview ? `${current!.folder}/${item!.file}:${thumbW}x${thumbH}` : '';
  useEffect(() => {
    if (!showPreview) return undefined;
    let live = true;
    const file = join(current!.folder, item!.file);
    const caption = readCaption(current!.folder, item!).catch(() => undefined);
    const picture = item!.kind === 'image' ? renderThumbnail(file, thumbW, thumbH).catch((e: Error) => `(cannot draw: ${e.message})`) : Promise.resolve('(video clip: no thumbnail)');
    void Promise.all([picture, caption]).then(([text, cap]) => { if (live) setThumb({ key: thumbKey, text, caption: cap }); });
    return () => { live = false; };
  }, [thumbKey]);

  useInput((input, key) => {
    if (overlay) return;
    setMessage(undefined); // a message answers the previous key only
    if (input !== 'x') setConfirmRemove(false);
    if (filesView) {
      const n = result?.items.length ?? 0;
      if (key.escape || input === 'q' || input === 'f') return setFilesView(false);
      if (key.upArrow || input === 'k') return setFileIndex((i) => Math.max(0, i - 1));
      if (key.downArrow || input === 'j') return setFileIndex((i) => Math.min(n - 1, i + 1));
      if (key.pageUp) return setFileIndex((i) => Math.max(0, i - (mainH - 4)));
      if (key.pageDown) return setFileIndex((i) => Math.min(n - 1, i + (mainH - 4)));
      return undefined;
    }
    if (key.upArrow || input === 'k') { setFileIndex(0); return setSelected((i) => Math.max(0, i - 1)); }
    if (key.downArrow || input === 'j') { setFileIndex(0); return setSelected((i) => Math.min(ds.list.length - 1, i + 1)); }
    if (input === 'a') return setOverlay({ kind: 'folder', text: '', candidates: [] });
    if (input === 'b') return setOverlay({ kind: 'buckets', text: resolutions.join(', ') });
    if (input === 'm') return setDivisibility((d) => DIVISIBILITIES[(DIVISIBILITIES.indexOf(d) + 1) % DIVISIBILITIES.length]!);
    if (!current) return undefined;
    if (key.return || input === 'r') return ds.scan(current.name, current.folder);
    if (input === 'g') {
      ds.toggleReg(current.name);
      return setMessage({ level: 'info', text: `${current.name}: ${current.is_reg ? 'no longer' : 'now'} a regularization dataset` });
    }
    if (input === 'f') {
      if (result && result.items.length > 0) { setFileIndex(0); return setFilesView(true); }
      return setMessage({ level: 'warning', text: 'nothing to show yet: the scan has not finished or found no readable files' });
    }
    if (input === 'x') {
      if (!confirmRemove) {
        setConfirmRemove(true);
        return setMessage({ level: 'warning', text: `press x again to forget "${current.name}" (the folder ${current.folder} is not touched)` });
      }
      setConfirmRemove(false);
      ds.remove(current.name);
      setSelected((i) => Math.max(0, i - 1));
      return setMessage({ level: 'info', text: `forgot ${current.name}` });
    }
    return undefined;
  }, { isActive: active });

  if (!active) return null;

  // ---- left: the dataset list ------------------------------------------------------------------
  const list = (
    <Box flexDirection="column" width={listW} height={mainH} borderStyle="single" borderTop={false} borderBottom={false} borderLeft={false}>
      <Text bold color="cyan">DATASETS</Text>
      {ds.list.length === 0 ? <Text dimColor wrap="wrap">none yet: press a to add a folder</Text> : null}
      {ds.list.map((d, i) => {
        const s = ds.scans[d.name];
        const status = s?.status === 'scanning' ? ` ${s.progress.total ? Math.floor((100 * s.progress.done) / s.progress.total) : 0}%`
          : s?.status === 'done' ? ` ${s.result.items.length}` : s?.status === 'error' ? ' ✗' : '';
        return (
          <Text key={d.name} inverse={i === selected} wrap="truncate-end">
            {d.name}{d.is_reg ? <Text color="magenta"> reg</Text> : ''}<Text dimColor={i !== selected}>{status}</Text>
          </Text>
        );
      })}
    </Box>
  );

  // ---- right: the selected dataset -------------------------------------------------------------
  let detail: React.ReactNode = <Text dimColor>Add a dataset folder with a. Scanning reads files; it never changes them.</Text>;
  if (current) {
    const header = (
      <Box flexDirection="column">
        <Text bold wrap="truncate-end">{current.name}{current.is_reg ? <Text color="magenta"> (regularization)</Text> : null}</Text>
        <Text dimColor wrap="truncate-end">{current.folder}</Text>
      </Box>
    );
    let body: React.ReactNode = null;
    if (scan?.status === 'scanning') {
      const { done, total } = scan.progress;
      const w = Math.max(10, detailW - 30);
      body = <Text color="cyan">{`Scanning ${done.toLocaleString('en-US')} / ${total.toLocaleString('en-US')} `}{bar(total ? done / total : 0, w)}</Text>;
    } else if (scan?.status === 'error') {
      body = <Text color="red" wrap="wrap">{scan.message}</Text>;
    } else if (result) {
      const summary = summaryLines(result, resolutions, divisibility, problems, counter, mainH - 4);
      const files = fileLines(result, fileIndex, wide ? Math.floor(detailW / 2) - 3 : Math.max(20, detailW - thumbW - 3), mainH - 3);
      const preview = (
        <Box flexDirection="column" width={thumbW + 2}>
          {thumb && thumb.key === thumbKey ? <Text>{thumb.text}</Text> : <Text dimColor>drawing...</Text>}
          <Text wrap="truncate-end" color={thumb?.caption ? undefined : 'yellow'}>{thumb && thumb.key === thumbKey ? (thumb.caption ?? '(no caption)') : ' '}</Text>
          {itemProblems.map((p) => <Text key={p} color="yellow" wrap="wrap">{`! ${p}`}</Text>)}
        </Box>
      );
      if (wide) {
        body = (
          <Box>
            <Box flexDirection="column" width={Math.floor(detailW / 2)} height={mainH - 2} paddingRight={2}>{filesView ? files : summary}</Box>
            <Box flexDirection="column" width={Math.floor(detailW / 2)} height={mainH - 2}>
              {preview}
              <Text dimColor wrap="truncate-end">{item ? `${item.file}${filesView ? '' : '  (f: browse files)'}` : ''}</Text>
            </Box>
          </Box>
        );
      } else if (filesView) {
        body = <Box>{files}{preview}</Box>;
      } else {
        body = <Box flexDirection="column">{summary}</Box>;
      }
    }
    detail = <Box flexDirection="column">{header}{body}</Box>;
  }

  const hints: Hint[] = filesView
    ? [['↑↓', 'file'], ['Esc', 'summary'], ['?', 'help']]
    : [['a', 'add'], ['r', 'scan'], ['g', 'reg'], ['f', 'files'], ['b', 'buckets'], ['x', 'forget'], ['?', 'help'], ['q', 'back']];

  let overlayBox: React.ReactNode = null;
  if (overlay) {
    const title = overlay.kind === 'folder' ? 'Dataset folder (Tab completes):' : overlay.kind === 'name' ? 'Name for this dataset:' : 'Bucket resolutions (comma separated):';
    overlayBox = (
      <Box flexDirection="column" borderStyle="round" borderColor="cyan" width={detailW - 1} paddingX={1}>
        <Text bold>{title} <Text dimColor>Enter accept, Esc cancel</Text></Text>
        <TextInput
          key={overlay.kind}
          initial={overlay.text}
          width={detailW - 6}
          onComplete={overlay.kind === 'folder' ? (v) => completePath(v, true) : undefined}
          onCandidates={(candidates) => setOverlay((o) => (o?.kind === 'folder' ? { ...o, candidates } : o))}
          onCancel={() => setOverlay(undefined)}
          onSubmit={(text) => {
            if (overlay.kind === 'folder') {
              const folder = resolve(expandHome(text.trim())).replace(/\/+$/, '') || '/';
              if (text.trim() === '' || folder === '/') return setMessage({ level: 'error', text: 'type the dataset folder' });
              // Said now, not when a job using it is prepared.
              const problem = folderProblem(folder);
              if (problem) return setMessage({ level: 'error', text: `${problem}: choose a folder of pictures` });
              return setOverlay({ kind: 'name', folder, text: basename(folder) });
            }
            if (overlay.kind === 'name') {
              try {
                ds.add(text, overlay.folder);
                setSelected(ds.list.length);
                setMessage({ level: 'info', text: `added ${text.trim()} (${overlay.folder}); scanning` });
                return setOverlay(undefined);
              } catch (err) {
                return setMessage({ level: 'error', text: (err as Error).message });
              }
            }
            const parsed = text.split(/[,\s]+/).filter(Boolean).map(Number);
            if (parsed.length === 0 || parsed.some((r) => !Number.isInteger(r) || r < 64 || r > 4096)) {
              return setMessage({ level: 'error', text: `resolutions must be whole numbers from 64 to 4096 (got ${JSON.stringify(text)})` });
            }
            setResolutions([...new Set(parsed)].sort((a, b) => a - b));
            return setOverlay(undefined);
          }}
        />
        {overlay.kind === 'folder' ? overlay.candidates.slice(0, 6).map((c) => <Text key={c} dimColor>{c}</Text>) : null}
      </Box>
    );
  }

  return (
    <Box flexDirection="column" width={width} height={height}>
      <Box width={width} height={mainH}>
        {list}
        <Box flexDirection="column" width={detailW} paddingLeft={1}>{overlayBox ?? detail}</Box>
      </Box>
      <MessageLine level={message?.level} text={message?.text ?? `buckets for ${resolutions.join(', ')} px, sides divisible by ${divisibility}`} width={width} />
      <StatusBar hints={hints} width={width} />
    </Box>
  );
}

function summaryLines(r: ScanResult, resolutions: number[], divisibility: number, problems: { file: string; problems: string[] }[],
  counter: CaptionCounter | undefined, rows: number): React.ReactNode {
  const sized = r.items.filter((i): i is typeof i & { width: number; height: number } => i.width !== undefined && i.height !== undefined);
  const hist = bucketHistogram(sized, resolutions, divisibility);
  const max = Math.max(1, ...hist.map((h) => h.count));
  const sources = Object.entries(r.captionSources).map(([k, v]) => `${k} ${v}`).join(', ');
  const barW = 20;
  const shownBuckets = hist.slice(0, Math.max(2, Math.min(8, rows - 8)));
  const problemLines = problems.flatMap((p) => p.problems.map((what) => `${p.file}: ${what}`));
  const shownProblems = Math.max(1, rows - 6 - shownBuckets.length);
  return (
    <>
      <Text wrap="truncate-end">{`Images ${r.images}  clips ${r.videos}  unreadable ${r.unreadable.length}  other files ${r.otherFiles}`}</Text>
      <Text wrap="truncate-end" color={r.missingCaptions > 0 ? 'yellow' : 'green'}>
        {`Captions ${r.captioned}${sources ? ` (${sources})` : ''}  missing ${r.missingCaptions}`}
      </Text>
      <Text bold>{`Buckets (${resolutions.join('/')}, ÷${divisibility}; an image counts at each it trains at)`}</Text>
      {shownBuckets.map((h) => (
        <Text key={h.bucket} wrap="truncate-end">{h.bucket.padStart(10)} {bar(h.count / max, barW).replace(/░+$/, '')} {h.count}</Text>
      ))}
      {hist.length > shownBuckets.length ? <Text dimColor>{`  ... ${hist.length - shownBuckets.length} more buckets`}</Text> : null}
      {problemLines.length === 0
        ? <Text dimColor wrap="truncate-end">{`No item to look at${counter ? ` (captions measured against ${counter.family}: ${counter.max} tokens)` : ''}.`}</Text>
        : <Text bold color="yellow" wrap="truncate-end">{`${problems.length} item${problems.length === 1 ? '' : 's'} to look at (f: per file)`}</Text>}
      {problemLines.slice(0, shownProblems).map((l) => <Text key={l} color="yellow" wrap="truncate-end">{`! ${l}`}</Text>)}
      {problemLines.length > shownProblems ? <Text color="yellow">{`  ... ${problemLines.length - shownProblems} more`}</Text> : null}
      {r.metadataErrors.slice(0, 2).map((e) => <Text key={`m${e.line}`} color="red" wrap="truncate-end">{`metadata.jsonl line ${e.line}: ${e.message}`}</Text>)}
      {r.unreadable.slice(0, 3).map((u) => <Text key={u.file} color="red" wrap="truncate-end">{`✗ ${u.file}: ${u.reason}`}</Text>)}
      {r.unreadable.length > 3 ? <Text color="red">{`  ... ${r.unreadable.length - 3} more unreadable`}</Text> : null}
    </>
  );
}

function fileLines(r: ScanResult, index: number, width: number, height: number): React.ReactNode {
  const rows = Math.max(1, height - 1);
  const start = Math.max(0, Math.min(index - Math.floor(rows / 2), r.items.length - rows));
  return (
    <Box flexDirection="column" width={width}>
      <Text bold>{`Files ${index + 1}/${r.items.length}`}</Text>
      {r.items.slice(start, start + rows).map((it, i) => (
        <Text key={it.file} inverse={start + i === index} wrap="truncate-end">
          {it.caption ? ' ' : <Text color="yellow">!</Text>}{it.file}{it.width ? <Text dimColor>{` ${it.width}x${it.height}`}</Text> : ''}
        </Text>
      ))}
    </Box>
  );
}
