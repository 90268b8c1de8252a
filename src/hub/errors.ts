// What goes wrong talking to the Hub, said so that the user knows what to do: which repo, revision or file,
// whether the repo is gated or private and where to accept its licence, how to give graft a token.
import type { HubSettings } from './settings.js';

export class HubError extends Error {
  constructor(message: string, readonly status?: number) {
    super(message);
    this.name = 'HubError';
  }
}

export interface RequestContext {
  settings: HubSettings;
  repo: string;
  revision: string;
  /** The file asked for; undefined for the repo's API. */
  path?: string;
  url: string;
}

function tokenAdvice(s: HubSettings): string {
  return `set HF_TOKEN=hf_... (a read token from ${s.endpoint}/settings/tokens) or run huggingface-cli login (it writes ${s.tokenFile})`;
}

function accessMessage(status: number, errorCode: string | null, errorMessage: string | null, c: RequestContext): string {
  const page = `${c.settings.endpoint}/${c.repo}`;
  const what = c.path ? `${c.path} of ${c.repo}` : c.repo;
  const token = c.settings.token;
  if (token && errorMessage === 'Invalid credentials in Authorization header') {
    return `the Hub refused the token from ${token.source} as invalid (${status}) for ${what}: make a new one at ${c.settings.endpoint}/settings/tokens and ${tokenAdvice(c.settings)}`;
  }
  const gated = errorCode === 'GatedRepo';
  const who = token ? `the token from ${token.source} has no access to it` : 'no token is set';
  const kind = gated ? 'is gated' : 'is gated or private (or does not exist)';
  return `${c.repo} ${kind} and ${who} (HTTP ${status} for ${what}): accept its licence at ${page} with your account` +
    `${token ? ' (the token must belong to that account)' : `, then ${tokenAdvice(c.settings)}`}`;
}

/** The message for an HTTP error status from the Hub, from its X-Error-Code / X-Error-Message headers. */
export function httpErrorMessage(status: number, headers: Headers, c: RequestContext): string {
  const code = headers.get('x-error-code');
  const message = headers.get('x-error-message');
  if (status === 401 || status === 403 || code === 'GatedRepo') return accessMessage(status, code, message, c);
  if (code === 'RevisionNotFound') return `${c.repo} has no revision ${JSON.stringify(c.revision)} (a branch, tag or commit; HTTP ${status} for ${c.url})`;
  if (code === 'EntryNotFound' || (status === 404 && c.path !== undefined && code !== 'RepoNotFound')) {
    return `${c.repo} has no file ${c.path} at revision ${c.revision} (HTTP ${status} for ${c.url})`;
  }
  if (status === 404) {
    const token = c.settings.token;
    return `no model repo ${c.repo} on ${c.settings.endpoint}${token ? ` that the token from ${token.source} can see` : ''} (HTTP 404): ` +
      `check the id (org/name, as in ${c.settings.endpoint}/${c.repo})${token ? ", or whether the repo is private and that token's account has access to it" : ''}`;
  }
  if (status === 429) return `the Hub is rate-limiting this machine (HTTP 429 for ${c.url}): wait a few minutes, and set a token (HF_TOKEN) for a higher limit`;
  return `the Hub answered HTTP ${status}${message ? ` (${message})` : ''} for ${c.url}: try again later`;
}

/**
 * Why a connection failed, from the innermost cause: a system error's code (ECONNREFUSED, ENOTFOUND,
 * ECONNRESET), else the message ("other side closed" rather than fetch's "terminated" around it).
 */
export function networkReason(err: unknown): string {
  let e = err as { cause?: unknown; code?: string; message?: string } | undefined;
  while (e?.cause && typeof e.cause === 'object') e = e.cause as typeof e;
  if (e?.code && !e.code.startsWith('UND_ERR')) return e.code;
  return e?.message || 'no answer';
}

/** A network failure (no answer at all): the URL, the system's reason, and what to try. */
export function networkErrorMessage(err: unknown, url: string, cachedSnapshot: string | undefined): string {
  const why = networkReason(err);
  const hint = cachedSnapshot
    ? `the cache already holds these files (${cachedSnapshot}): set HF_HUB_OFFLINE=1 to use them without the network`
    : 'check the network, or HF_ENDPOINT if a mirror is meant';
  return `cannot reach ${url} (${why}): ${hint}`;
}
