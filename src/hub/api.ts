// The repo at a revision, through @huggingface/hub's modelInfo (GET /api/models/{repo}/revision/{rev}): the
// commit the revision points to and the repo's file list, from which a family's files are chosen.
import { modelInfo } from '@huggingface/hub';
import { HubError, httpErrorMessage } from './errors.js';
import { NetworkFailure } from './http.js';
import type { HubSettings } from './settings.js';

export interface RevisionInfo {
  commit: string;
  files: string[];
  gated: false | 'auto' | 'manual';
}

export function revisionUrl(s: HubSettings, repo: string, revision: string): string {
  return `${s.endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`;
}

export async function revisionInfo(s: HubSettings, repo: string, revision: string, signal?: AbortSignal): Promise<RevisionInfo> {
  const url = revisionUrl(s, repo, revision);
  if (s.token && !s.token.value.startsWith('hf_')) {
    throw new HubError(`the token from ${s.token.source} is not a Hugging Face access token (they start with hf_): make one at ${s.endpoint}/settings/tokens`);
  }
  // The library keeps the status of a failed answer but not its headers, whose X-Error-Code tells a missing
  // revision from a missing repo: the fetch it is given remembers the last answer.
  let last: Response | undefined;
  const remembering: typeof fetch = async (input, init) => {
    try {
      last = await fetch(input, { ...init, signal });
      return last;
    } catch (e) {
      if (signal?.aborted) throw e;
      throw new NetworkFailure(url, e);
    }
  };
  try {
    const info = await modelInfo({ name: repo, revision, hubUrl: s.endpoint, accessToken: s.token?.value, additionalFields: ['sha', 'filePaths'], fetch: remembering });
    if (typeof info.sha !== 'string' || !/^[0-9a-f]{40}$/.test(info.sha)) throw new HubError(`the Hub's answer for ${repo}@${revision} has no commit (${url})`);
    return { commit: info.sha, files: info.filePaths ?? [], gated: info.gated ?? false };
  } catch (e) {
    if (e instanceof HubError || e instanceof NetworkFailure || signal?.aborted) throw e;
    if (last && !last.ok) throw new HubError(httpErrorMessage(last.status, last.headers, { settings: s, repo, revision, url }), last.status);
    throw new HubError(`the Hub's answer for ${repo}@${revision} could not be read (${url}): ${(e as Error).message}`);
  }
}
