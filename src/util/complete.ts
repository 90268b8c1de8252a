// Path completion for folder inputs (Tab), like a shell: complete the unique match, or the common prefix.
import { readdirSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { expandHome } from '../paths.js';

export interface Completion {
  value: string;
  candidates: string[];
}

export function completePath(input: string, onlyDirs = true): Completion {
  const expanded = expandHome(input === '' ? './' : input);
  const endsWithSep = expanded.endsWith('/');
  const dir = endsWithSep ? expanded : dirname(expanded);
  const prefix = endsWithSep ? '' : basename(expanded);
  let entries: { name: string; isDir: boolean }[];
  try {
    entries = readdirSync(dir, { withFileTypes: true }).map((e) => ({ name: e.name, isDir: e.isDirectory() || e.isSymbolicLink() }));
  } catch {
    return { value: input, candidates: [] };
  }
  const matches = entries
    .filter((e) => e.name.startsWith(prefix) && (!onlyDirs || e.isDir) && (prefix.startsWith('.') || !e.name.startsWith('.')))
    .sort((a, b) => a.name.localeCompare(b.name));
  if (matches.length === 0) return { value: input, candidates: [] };
  const head = input === '' ? './' : input.slice(0, input.length - prefix.length);
  if (matches.length === 1) {
    const m = matches[0]!;
    return { value: head + m.name + (m.isDir ? '/' : ''), candidates: [] };
  }
  let common = matches[0]!.name;
  for (const m of matches) while (!m.name.startsWith(common)) common = common.slice(0, -1);
  return { value: head + common, candidates: matches.map((m) => m.name + (m.isDir ? '/' : '')) };
}

