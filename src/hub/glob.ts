// Repo file patterns with the meaning huggingface-cli's --include gives them (Python's fnmatch): `*` matches
// any characters, '/' included, `?` one character, `[abc]` / `[!abc]` a class; a pattern ending in '/' means
// everything under that folder. node:path's matchesGlob is experimental on Node 20 and stops `*` at '/'.

function toRegExp(pattern: string): RegExp {
  const p = pattern.endsWith('/') ? `${pattern}*` : pattern;
  let re = '';
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = p.indexOf(']', i + 2);
      if (end < 0) { re += '\\['; continue; }
      let body = p.slice(i + 1, end).replace(/\\/g, '\\\\');
      if (body.startsWith('!')) body = `^${body.slice(1)}`;
      re += `[${body}]`;
      i = end;
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 's');
}

const cache = new Map<string, RegExp>();

export function matchesPattern(path: string, pattern: string): boolean {
  let re = cache.get(pattern);
  if (!re) cache.set(pattern, (re = toRegExp(pattern)));
  return re.test(path);
}

export function matchesAny(path: string, patterns: readonly string[]): boolean {
  return patterns.some((p) => matchesPattern(path, p));
}
