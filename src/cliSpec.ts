// graft's command line: every command and subcommand, its usage, its options, and the parsing every one
// shares: --help / -h anywhere prints the usage and exits 0; an unknown command is named with the nearest
// one; an unknown option, or a missing or extra argument, is a usage error (exit 2).
import { parseArgs, type ParseArgsConfig } from 'node:util';

type Options = NonNullable<ParseArgsConfig['options']>;

export interface CommandSpec {
  /** The words that name it: ['queue', 'add']. */
  path: string[];
  /** Its arguments as the usage line writes them, after the command words. */
  args: string;
  about: string;
  /** Lines after the usage in its --help. */
  details?: string[];
  options?: Options;
  /** How many positional arguments it takes. */
  positionals: [min: number, max: number];
  /** Not listed in help (the daemon's own entry point). */
  hidden?: boolean;
}

const json = { json: { type: 'boolean' } } as const;

export const COMMANDS: CommandSpec[] = [
  { path: [], args: '[config.yaml]', about: 'open the TUI (with this job in New Job)', positionals: [0, 1] },
  { path: ['watch'], args: '<job>', about: "open the TUI on a job's monitor", positionals: [1, 1] },
  { path: ['validate'], args: '<config.yaml>', about: 'check a job config: errors, what graft cannot train yet, warnings',
    details: ['exit 0: valid and graft trains it here · 1: errors · 3: valid, but graft cannot train it yet (the lines say why)'], positionals: [1, 1] },
  { path: ['prepare'], args: '<config.yaml|job-dir>', about: 'scan the datasets, write prepared/ (bucketed PNGs) and job.json; reuses earlier work', positionals: [1, 1] },
  { path: ['run'], args: '<job-dir|config.yaml>', about: 'prepare, then train in the foreground; exit 0 only on success', positionals: [1, 1] },
  { path: ['download'], args: '<repo-id> [--family F] [--include GLOB]',
    about: 'fetch a model from the Hugging Face Hub into its shared cache (resumable, checked); prints the snapshot folder',
    options: { revision: { type: 'string' }, family: { type: 'string' }, 'tokenizers-only': { type: 'boolean' }, include: { type: 'string', multiple: true } },
    details: [
      '<repo-id>: org/name, or org/name@revision (a branch, tag or commit; or --revision R)',
      '--family F: the files model family F trains on (flux1: the diffusers folders, not the root single files); taken from the repo id',
      '  for the repos graft knows (black-forest-labs/FLUX.1-dev, -schnell); --tokenizers-only: only its tokenizers and model_index.json',
      '--include GLOB (repeatable): files matching it too, as huggingface-cli --include; with neither option, every file of the repo',
      'The cache is huggingface_hub\'s: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. The token: $HF_TOKEN, else HF_TOKEN',
      'in ./.env, else the file huggingface-cli login writes. HF_ENDPOINT: another Hub or mirror. HF_HUB_OFFLINE=1: the cache only.',
      'exit 0: every file present (the last line is the snapshot folder) · 1: failed (the message says why) · 130: interrupted (the next run resumes)',
    ],
    positionals: [1, 1] },
  { path: ['queue', 'add'], args: '<job-dir|config.yaml> [--gpu N]', about: 'queue a job (refused up front when graft cannot train it)', options: { gpu: { type: 'string' } }, positionals: [1, 1] },
  { path: ['queue', 'ls'], args: '[--json]', about: 'every job: state, GPU, progress, last error', options: json, positionals: [0, 0],
    details: ['--json: one array of {id, name, state, gpu, slot, position, step, steps, eta_s, loss, job_dir, config_path, last_error, exit_code, runs}'] },
  { path: ['queue', 'stop'], args: '<job> [--force]', about: 'save a checkpoint and stop (--force: at once); a queued job leaves the queue', options: { force: { type: 'boolean' } }, positionals: [1, 1] },
  { path: ['queue', 'resume'], args: '<job>', about: 'continue a stopped, failed or extended job from its saved state (next on its GPU)', positionals: [1, 1] },
  { path: ['queue', 'requeue'], args: '<job>', about: 'put a stopped or failed job back at the end of its GPU\'s queue', positionals: [1, 1] },
  { path: ['queue', 'extend'], args: '<job> --steps N', about: 'train a finished job further: raise train.steps in its config.yaml and queue it; it resumes from its last state',
    options: { steps: { type: 'string' } }, positionals: [1, 1] },
  { path: ['queue', 'move'], args: '<job> up|down|top', about: 'reorder a queued job in its GPU\'s queue', positionals: [2, 2] },
  { path: ['queue', 'rm'], args: '<job> [--outputs] [--yes]', about: 'delete a job (asks; --outputs also deletes what training wrote)', options: { outputs: { type: 'boolean' }, yes: { type: 'boolean' } }, positionals: [1, 1] },
  { path: ['daemon', 'status'], args: '[--json]', about: 'the queue daemon: pid, slots, running jobs (exit 3 when none runs)', options: json, positionals: [0, 0] },
  { path: ['daemon', 'stop'], args: '', about: 'stop the daemon; running jobs save and stop first (resume them later)', positionals: [0, 0] },
  { path: ['daemon', 'start'], args: '', about: 'start the daemon now (the TUI and queue commands start it on demand)', positionals: [0, 0] },
  { path: ['daemon', 'run'], args: '', about: 'the daemon process itself', positionals: [0, 0], hidden: true },
  { path: ['logs'], args: '<job> [-f]', about: "a job's log.txt (-f: follow while it runs)", options: { follow: { type: 'boolean', short: 'f' } }, positionals: [1, 1] },
];

export const GROUPS: Record<string, string> = { queue: 'the job queue (through the daemon)', daemon: 'the queue daemon' };

export const JOB_REF = '<job> is a job id, a job name or a job folder.';
export const HOME_NOTE = 'The graft home (queue database, named datasets, default job folders) is $GRAFT_HOME, default ~/.graft.';

export function usageLine(spec: CommandSpec): string {
  return ['graft', ...spec.path, spec.args].filter(Boolean).join(' ');
}

/** Every command, one line each: what `graft --help` prints. */
export function fullUsage(): string {
  const shown = COMMANDS.filter((c) => !c.hidden);
  const w = Math.max(...shown.map((c) => usageLine(c).length)) + 2;
  return [
    'usage:',
    ...shown.map((c) => `  ${usageLine(c).padEnd(w)}${c.about}`),
    `  ${'graft --version | --help'.padEnd(w)}every command also takes --help`,
    '',
    JOB_REF,
    HOME_NOTE,
    'Exit codes: 0 done; 1 failed or refused (the message says why); 2 usage error; 3 validate: valid, but graft cannot train it yet;',
    '3 daemon status: no daemon running. graft run exits with the trainer\'s code (130: stopped by Ctrl+C).',
  ].join('\n');
}

/** The help of one command, or of a group (`graft queue --help`). */
export function commandHelp(path: string[]): string {
  const exact = COMMANDS.find((c) => c.path.join(' ') === path.join(' '));
  if (exact && path.length > 0) {
    return [`usage: ${usageLine(exact)}`, `  ${exact.about}`, ...(exact.details ?? []).map((d) => `  ${d}`), ...(exact.args.includes('<job>') ? [JOB_REF] : [])].join('\n');
  }
  const members = COMMANDS.filter((c) => !c.hidden && c.path.length > 1 && c.path[0] === path[0]);
  const w = Math.max(...members.map((c) => usageLine(c).length)) + 2;
  return [`graft ${path[0]}: ${GROUPS[path[0]!] ?? ''}`, 'usage:', ...members.map((c) => `  ${usageLine(c).padEnd(w)}${c.about}`), JOB_REF].join('\n');
}

export class UsageError extends Error {}

function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length]![b.length]!;
}

/** The known word nearest to `word`, when it is near enough to be a typo. */
export function nearest(word: string, known: string[]): string | undefined {
  const scored = known.map((k) => [k, distance(word, k)] as const).sort((a, b) => a[1] - b[1]);
  const best = scored[0];
  return best && best[1] <= Math.max(2, Math.floor(word.length / 3)) ? best[0] : undefined;
}

export interface Parsed {
  spec: CommandSpec;
  positionals: string[];
  values: Record<string, string | boolean | undefined>;
}

/**
 * Which command argv names and its arguments. Throws UsageError for an unknown command or option or a wrong
 * number of arguments; returns 'help' with the text when --help / -h is among the arguments.
 */
export function parseCommandLine(argv: string[]): Parsed | { help: string } {
  const [first, second] = argv;
  const groupWords = Object.keys(GROUPS);
  let spec: CommandSpec | undefined;
  let rest: string[];
  if (first !== undefined && groupWords.includes(first)) {
    if (second === undefined || second === '--help' || second === '-h') return { help: commandHelp([first]) };
    spec = COMMANDS.find((c) => c.path[0] === first && c.path[1] === second);
    if (!spec) {
      const subs = COMMANDS.filter((c) => c.path[0] === first && c.path.length === 2 && !c.hidden).map((c) => c.path[1]!);
      const near = nearest(second, subs);
      throw new UsageError(`unknown command: graft ${first} ${second}${near ? ` (did you mean graft ${first} ${near}?)` : ''}; graft ${first} --help lists them`);
    }
    rest = argv.slice(2);
  } else {
    spec = COMMANDS.find((c) => c.path.length === 1 && c.path[0] === first);
    rest = argv.slice(1);
    if (!spec) {
      // Not a command word: a config file to open in the TUI, or a mistyped command.
      spec = COMMANDS.find((c) => c.path.length === 0)!;
      rest = argv;
      if (first !== undefined && !first.startsWith('-') && !/[./]/.test(first)) {
        const words = [...new Set(COMMANDS.filter((c) => !c.hidden && c.path.length > 0).map((c) => c.path[0]!))];
        const near = nearest(first, words);
        throw new UsageError(`unknown command: ${first}${near ? ` (did you mean graft ${near}?)` : ''}; graft --help lists the commands (a config file to open needs its path, e.g. ./${first}.yaml)`);
      }
    }
  }
  if (rest.includes('--help') || rest.includes('-h')) return { help: spec.path.length === 0 ? fullUsage() : commandHelp(spec.path) };
  let parsed;
  try {
    parsed = parseArgs({ args: rest, options: spec.options ?? {}, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${usageLine(spec)}: ${(err as Error).message.split('\n')[0]!.replace(/\. To specify a positional argument.*$/, '')}`);
  }
  const [min, max] = spec.positionals;
  const n = parsed.positionals.length;
  if (n < min || n > max) {
    throw new UsageError(`${n < min ? 'missing argument' : `unexpected argument ${JSON.stringify(parsed.positionals[max])}`}; usage: ${usageLine(spec)}`);
  }
  return { spec, positionals: parsed.positionals, values: parsed.values as Parsed['values'] };
}
