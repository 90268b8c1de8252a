// The files that sit beside a single checkpoint file, as ComfyUI and BFL lay them out: the file's own
// folder, ComfyUI's sibling folders of models/ (vae/, text_encoders/, clip/) and the folder above. Model
// resolution finds a family's other parts there by file name (fluxModel.ts, zimageModel.ts).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';

export const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory();

/** The folders a part may sit in beside a checkpoint file: its own, ComfyUI's sibling folders, the parent. */
export function besideDirs(file: string): string[] {
  const d = dirname(file), up = dirname(d);
  return [d, join(up, 'vae'), join(up, 'text_encoders'), join(up, 'clip'), up].filter((x, i, all) => isDir(x) && all.indexOf(x) === i);
}

/** Each folder with its files, sorted: listed once, searched for every part. */
export function listings(dirs: string[]): [string, string[]][] {
  return dirs.map((d): [string, string[]] => [d, readdirSync(d).sort()]);
}

/** The first file of the listings a pattern matches, patterns in order of preference. */
export function findBeside(listed: [string, string[]][], patterns: RegExp[]): string | undefined {
  for (const re of patterns) {
    for (const [dir, files] of listed) {
      const hit = files.find((f) => re.test(f) && statSync(join(dir, f)).isFile());
      if (hit) return join(dir, hit);
    }
  }
  return undefined;
}
