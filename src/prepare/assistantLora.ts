// The assistant LoRA a job trains through: model.assistant_lora_path, as the reference toolkit reads it (Z-Image
// Turbo's de-distilling training adapter, ostris/zimage_turbo_training_adapter). A local file wins; else
// "owner/repo/path/in/repo.safetensors" names a file of a Hub repo, fetched into the shared Hugging Face cache
// with the model download code (resumable, checksummed, offline from the cache).
import { existsSync, statSync } from 'node:fs';
import { dirname, extname, resolve } from 'node:path';
import { parseRepoRef } from '../hub/index.js';
import { expandHome } from '../paths.js';
import { PrepareError } from './errors.js';
import { hubSnapshot } from './hubSnapshot.js';
import type { ResolveOptions } from './model.js';

/** The adapter file's absolute path, downloaded first when it is on the Hub. */
export async function resolveAssistantLora(value: string, configPath: string, opts: ResolveOptions): Promise<string> {
  const where = `${configPath}: config.process[0].model.assistant_lora_path ${JSON.stringify(value)}`;
  const local = resolve(dirname(configPath), expandHome(value));
  if (existsSync(local)) {
    if (!statSync(local).isFile()) throw new PrepareError(`${where}: ${local} is a folder; name the adapter's .safetensors file`);
    return local;
  }
  const parts = value.split('/');
  const ref = parts.length >= 3 ? parseRepoRef(parts.slice(0, 2).join('/')) : undefined;
  const file = parts.slice(2).join('/');
  if (!ref || value.startsWith('/') || value.startsWith('.') || value.startsWith('~')) {
    throw new PrepareError(`${where}: no such file (${local}), and not a file of a Hub repo (owner/repo/file.safetensors)`);
  }
  if (extname(file) !== '.safetensors') throw new PrepareError(`${where}: ${file} is not a .safetensors file`);
  const snapshot = await hubSnapshot(ref.revision ? `${ref.repo}@${ref.revision}` : ref.repo, { files: [file] }, where, opts);
  return resolve(snapshot, file);
}
