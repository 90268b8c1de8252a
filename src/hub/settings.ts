// Where the Hub is, where its cache lives, which token to send and whether the network may be used: read
// from the same environment variables and files huggingface_hub reads, so graft, huggingface-cli and
// diffusers share one cache and one login.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

export interface HubToken {
  value: string;
  /** Where it came from, for messages: "HF_TOKEN", "/work/.env", "/home/u/.cache/huggingface/token". */
  source: string;
}

export interface HubSettings {
  endpoint: string;
  /** The hub cache: models--org--name folders live here. */
  cacheDir: string;
  /** The file `huggingface-cli login` writes. */
  tokenFile: string;
  token?: HubToken;
  offline: boolean;
}

const set = (v: string | undefined): v is string => v !== undefined && v.trim() !== '';

/** huggingface_hub's reading of a boolean variable: 1, ON, YES, TRUE in any case. */
function envFlag(v: string | undefined): boolean {
  return set(v) && ['1', 'on', 'yes', 'true'].includes(v.trim().toLowerCase());
}

function hfHome(env: NodeJS.ProcessEnv): string {
  if (set(env.HF_HOME)) return resolve(env.HF_HOME);
  const xdg = set(env.XDG_CACHE_HOME) ? env.XDG_CACHE_HOME : join(homedir(), '.cache');
  return join(xdg, 'huggingface');
}

/** HF_HUB_CACHE (or its older name HUGGINGFACE_HUB_CACHE), else $HF_HOME/hub, else ~/.cache/huggingface/hub. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (set(env.HF_HUB_CACHE)) return resolve(env.HF_HUB_CACHE);
  if (set(env.HUGGINGFACE_HUB_CACHE)) return resolve(env.HUGGINGFACE_HUB_CACHE);
  return join(hfHome(env), 'hub');
}

/** The value of HF_TOKEN in a dotenv file, if it sets one. */
function tokenFromDotenv(file: string): string | undefined {
  if (!existsSync(file)) return undefined;
  for (const line of readFileSync(file, 'utf8').split(/\r?\n/)) {
    const m = /^\s*(?:export\s+)?HF_TOKEN\s*=\s*(.*?)\s*$/.exec(line);
    if (m) return m[1]!.replace(/^(['"])(.*)\1$/, '$2') || undefined;
  }
  return undefined;
}

/**
 * The token to send: HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN) from the environment, then HF_TOKEN in a
 * .env file of the working folder (as the spec asks), then the token file `huggingface-cli login` wrote.
 */
function findToken(env: NodeJS.ProcessEnv, cwd: string, tokenFile: string): HubToken | undefined {
  for (const name of ['HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN']) {
    if (set(env[name])) return { value: env[name].trim(), source: name };
  }
  const dotenv = join(cwd, '.env');
  const fromDotenv = tokenFromDotenv(dotenv);
  if (fromDotenv) return { value: fromDotenv, source: dotenv };
  if (existsSync(tokenFile)) {
    const value = readFileSync(tokenFile, 'utf8').trim();
    if (value) return { value, source: tokenFile };
  }
  return undefined;
}

export function hubSettings(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): HubSettings {
  const tokenFile = set(env.HF_TOKEN_PATH) ? resolve(env.HF_TOKEN_PATH) : join(hfHome(env), 'token');
  return {
    endpoint: (set(env.HF_ENDPOINT) ? env.HF_ENDPOINT.trim() : DEFAULT_ENDPOINT).replace(/\/+$/, ''),
    cacheDir: hubCacheDir(env),
    tokenFile,
    token: findToken(env, cwd, tokenFile),
    offline: envFlag(env.HF_HUB_OFFLINE),
  };
}
