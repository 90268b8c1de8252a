// Hub model ids as a config writes them: `org/name`, or `org/name@revision` (a branch, tag or commit).
import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';

// The Hub's rule for each half: letters, digits, '-', '_', '.', starting with a letter or digit, no '--' or '..'.
const PART = '[A-Za-z0-9][A-Za-z0-9_.-]{0,95}';
const REPO_RE = new RegExp(`^(${PART})/(${PART})(?:@(\\S+))?$`);

export interface RepoRef {
  /** org/name */
  repo: string;
  /** The revision written after '@', if any. */
  revision?: string;
}

/** `org/name[@revision]` split, or undefined when the text is not of that form. */
export function parseRepoRef(text: string): RepoRef | undefined {
  const m = REPO_RE.exec(text.trim());
  if (!m) return undefined;
  const [, org, name, revision] = m;
  if (/--|\.\./.test(`${org}/${name}`) || name!.endsWith('.git')) return undefined;
  return { repo: `${org}/${name}`, revision };
}

/**
 * Whether a model's name_or_path means the Hub: of the form org/name[@revision] and not a path that exists
 * (relative to any of baseDirs, default the working folder), so a local folder such as presets/graft-tiny wins.
 */
export function isRepoId(nameOrPath: string, opts: { baseDirs?: string[] } = {}): boolean {
  const text = nameOrPath.trim();
  if (isAbsolute(text) || /^(\.{1,2}|~)(\/|$)/.test(text) || !parseRepoRef(text)) return false;
  const baseDirs = opts.baseDirs ?? [process.cwd()];
  return !baseDirs.some((dir) => existsSync(resolve(dir, text)));
}
