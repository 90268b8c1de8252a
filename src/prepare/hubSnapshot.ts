// A Hub repo's snapshot folder for model resolution (fluxModel.ts, zimageModel.ts, assistantLora.ts):
// the chosen files made present in the shared cache (downloaded, or read from it offline), with a
// failure told as one PrepareError that says why graft asked the Hub at all.
import { ensureModelFiles, HubError, lineLogger, type FileChoice } from '../hub/index.js';
import { PrepareError } from './errors.js';
import type { ResolveOptions } from './model.js';

/** The snapshot folder holding `choice` of `repo`; `what` opens the message of a failure. */
export async function hubSnapshot(repo: string, choice: FileChoice, what: string, opts: ResolveOptions): Promise<string> {
  const log = opts.log ?? (() => {});
  const env = opts.offline ? { ...(opts.env ?? process.env), HF_HUB_OFFLINE: '1' } : opts.env;
  try {
    const got = await ensureModelFiles(repo, {
      ...choice, signal: opts.signal, env,
      onProgress: lineLogger((line) => log(`hub: ${line}`), 5000),
    });
    return got.snapshotDir;
  } catch (e) {
    if (e instanceof HubError) throw new PrepareError(`${what}: ${e.message}`);
    throw e;
  }
}
