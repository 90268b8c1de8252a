#!/usr/bin/env node
// graft: `graft` opens the TUI; `graft <config.yaml>` opens it on that job; `graft validate <config.yaml>` checks a file.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { loadJobFile, type Loaded } from './config/jobfile.js';
import { checkJob } from './config/check.js';
import { graftHome, packageRoot } from './paths.js';
import { loadPresets } from './presets.js';
import { COMMANDS_USAGE, findJob, runCommandLine } from './commands.js';
import { Store } from './queue/store.js';

const USAGE = `usage:
  graft                      open the TUI
  graft <config.yaml>        open the TUI with this job in New Job
  graft watch <job>          open the TUI on the Job monitor of a queued or running job
  graft validate <config>    check a job config; exit 1 on errors
  graft --version | --help
${COMMANDS_USAGE}

The graft home (queue database, named datasets, default job folders) is $GRAFT_HOME, default ~/.graft.`;

function version(): string {
  return (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** graft validate: 0 valid and trainable here, 1 invalid, 3 valid but not something graft can train yet. */
function validateCommand(file: string): number {
  const presets = loadPresets();
  let loaded: Loaded;
  try {
    loaded = loadJobFile(file);
  } catch (err) {
    process.stderr.write(`graft: ${(err as Error).message}\n`);
    return 1;
  }
  const check = checkJob(loaded.doc, presets, { configDir: dirname(loaded.path) });
  for (const key of check.ignored) process.stdout.write(`ignored (kept on save): ${key}\n`);
  for (const w of check.warnings) process.stdout.write(`warning: ${w.message}\n`);
  for (const u of check.unsupported) process.stdout.write(`${u.message}\n`);
  for (const e of check.errors) process.stdout.write(`error: ${e.message}\n`);
  const family = check.family;
  if (check.errors.length > 0) { process.stdout.write(`${loaded.path}: ${check.errors.length} error(s)\n`); return 1; }
  if (check.unsupported.length > 0) {
    const n = check.unsupported.length;
    process.stdout.write(`${loaded.path}: valid (${family}), but graft cannot train it yet (${n} reason${n === 1 ? '' : 's'} above)\n`);
    return 3;
  }
  process.stdout.write(`${loaded.path}: ok (${family})\n`);
  return 0;
}

async function tui(file: string | undefined, watch?: string): Promise<number> {
  if (!process.stdin.isTTY || !process.stdout.isTTY) {
    process.stderr.write('graft: the TUI needs a terminal (run it in a terminal, tmux or ssh -t); see graft --help\n');
    return 2;
  }
  const presets = loadPresets();
  let initial: Loaded | undefined;
  if (file) {
    try {
      initial = loadJobFile(file);
    } catch (err) {
      process.stderr.write(`graft: ${(err as Error).message}\n`);
      return 1;
    }
  }
  // Ink stops drawing frames when it sees a CI flag (is-in-ci reads CI and CONTINUOUS_INTEGRATION when
  // Ink is first imported). The TUI runs only on a terminal, checked above, so a box or a shell that
  // exports CI=true must still get a live screen: drop the flags before Ink loads.
  delete process.env.CI;
  delete process.env.CONTINUOUS_INTEGRATION;
  // React's development build checks every element: a Job monitor watching a training job took a
  // quarter of a core with it, on a box whose cores train. The build is chosen when React first loads,
  // so this file has no JSX (which would import react/jsx-runtime before any line here runs).
  process.env.NODE_ENV ??= 'production';
  // Ink, React and the screens load only for the TUI, so validate and --help answer quickly.
  const [{ renderTui }, { App }, { createElement }] = await Promise.all([import('./tui/render.js'), import('../screens/App.js'), import('react')]);
  const store = new Store(graftHome());
  let initialJob: number | undefined;
  if (watch !== undefined) {
    try {
      initialJob = findJob(store, watch).id;
    } catch (err) {
      store.close();
      process.stderr.write(`graft: ${(err as Error).message}\n`);
      return 1;
    }
  }
  // The alternate screen keeps the user's scrollback clean; it is left again however graft exits.
  process.stdout.write('\x1b[?1049h\x1b[H');
  const leave = () => process.stdout.write('\x1b[?1049l');
  process.on('exit', leave);
  // The terminal can vanish (ssh drops, tmux session killed): writes then fail with EIO. Quit quietly;
  // nothing in the TUI must survive it (training runs in the daemon).
  const gone = () => { store.close(); process.exit(0); };
  process.stdout.on('error', gone);
  process.on('SIGHUP', gone);
  try {
    const { ensureDaemon, request } = await import('./daemon/client.js');
    const home = graftHome();
    const daemon = { ensure: () => ensureDaemon(home), send: (req: Parameters<typeof request>[1]) => request(home, req) };
    const { app } = renderTui(createElement(App, { store, presets, initial, daemon, initialJob, initialScreen: initialJob !== undefined ? 'job' : undefined }), { stdin: process.stdin, stdout: process.stdout });
    await app.waitUntilExit();
  } finally {
    store.close();
    leave();
    process.off('exit', leave);
  }
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, arg] = argv;
  if (cmd === '--help' || cmd === '-h') { process.stdout.write(`${USAGE}\n`); return 0; }
  if (cmd === '--version' || cmd === '-v') { process.stdout.write(`graft ${version()}\n`); return 0; }
  if (cmd === 'validate') { if (!arg) { process.stderr.write(`${USAGE}\n`); return 2; } return validateCommand(arg); }
  const done = await runCommandLine(argv);
  if (done !== undefined) return done;
  if (cmd === 'watch') {
    if (!arg) { process.stderr.write(`graft watch: which job? (an id, a name or a job folder; see graft queue ls)\n`); return 2; }
    return tui(undefined, arg);
  }
  if (cmd !== undefined && cmd.startsWith('-')) { process.stderr.write(`graft: unknown option ${cmd}\n${USAGE}\n`); return 2; }
  return tui(cmd);
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err: unknown) => {
  process.stderr.write(`graft: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
