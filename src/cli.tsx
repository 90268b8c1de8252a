#!/usr/bin/env node
// graft: `graft` opens the TUI; `graft <config.yaml>` opens it on that job; the other commands are in cliSpec.ts.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { loadJobFile, type Loaded } from './config/jobfile.js';
import { checkJob } from './config/check.js';
import { graftHome, packageRoot } from './paths.js';
import { loadPresets } from './presets.js';
import { findJob, runCommandLine } from './commands.js';
import { parseCommandLine, UsageError } from './cliSpec.js';
import { Store } from './queue/store.js';

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
  let initial: Loaded | undefined;
  if (file) {
    try {
      initial = loadJobFile(file);
    } catch (err) {
      process.stderr.write(`graft: ${(err as Error).message}\n`);
      return 1;
    }
  }
  if (!process.stdin.isTTY || !process.stdout.isTTY) {
    process.stderr.write('graft: the TUI needs a terminal (run it in a terminal, tmux or ssh -t); graft --help lists the commands for scripts\n');
    return 2;
  }
  const presets = loadPresets();
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
  if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-v')) { process.stdout.write(`graft ${version()}\n`); return 0; }
  let p;
  try {
    p = parseCommandLine(argv);
  } catch (err) {
    if (err instanceof UsageError) { process.stderr.write(`graft: ${err.message}\n`); return 2; }
    throw err;
  }
  if ('help' in p) { process.stdout.write(`${p.help}\n`); return 0; }
  const [cmd] = p.spec.path;
  if (cmd === 'validate') return validateCommand(p.positionals[0]!);
  if (cmd === 'watch') return tui(undefined, p.positionals[0]);
  if (cmd === undefined) return tui(p.positionals[0]);
  try {
    return (await runCommandLine(p)) ?? 2;
  } catch (err) {
    // A command's own argument check (--gpu q, --family nope) is a usage error too, not a crash.
    if (err instanceof UsageError) { process.stderr.write(`graft: ${err.message}\n`); return 2; }
    throw err;
  }
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err: unknown) => {
  process.stderr.write(`graft: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
