// Driving the real `graft` in a real terminal (tmux) like a user: a private tmux server per test file,
// keys sent one at a time with a redraw in between, and waits on what the screen shows.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { sleep } from './daemon.js';

export interface Tmux {
  tmux: (...args: string[]) => string;
  screen: () => string;
  waitScreen: (ok: (s: string) => boolean, what: string, timeoutMs?: number) => Promise<string>;
  waitFor: (text: string | RegExp, timeoutMs?: number) => Promise<string>;
  /** Press keys one at a time (tmux key names: Tab, Down, Enter, Escape, C-u), letting the UI redraw in between. */
  keys: (...names: string[]) => Promise<void>;
  /** Run `command` in a fresh session of the given size and wait until the screen shows `ready`. */
  open: (command: string, columns: number, rows: number, ready: string) => Promise<void>;
  /** Stop the server and remove its socket. */
  close: () => void;
}

export function tmuxDriver(socket: string, session: string, defaultTimeoutMs: number): Tmux {
  const tmux = (...args: string[]) => execFileSync('tmux', ['-L', socket, ...args], { encoding: 'utf8' });
  const screen = () => tmux('capture-pane', '-p', '-t', session);
  async function waitScreen(ok: (s: string) => boolean, what: string, timeoutMs = defaultTimeoutMs): Promise<string> {
    const start = Date.now();
    for (;;) {
      const s = screen();
      if (ok(s)) return s;
      if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}; screen:\n${s}`);
      await sleep(100);
    }
  }
  const waitFor = (text: string | RegExp, timeoutMs?: number) =>
    waitScreen((s) => (typeof text === 'string' ? s.includes(text) : text.test(s)), String(text), timeoutMs);
  async function keys(...names: string[]): Promise<void> {
    for (const k of names) {
      const before = screen();
      tmux('send-keys', '-t', session, k);
      const start = Date.now();
      while (screen() === before && Date.now() - start < 1500) await sleep(20);
      await sleep(30);
    }
  }
  async function open(command: string, columns: number, rows: number, ready: string): Promise<void> {
    try { tmux('kill-session', '-t', session); } catch { /* no session yet */ }
    tmux('new-session', '-d', '-s', session, '-x', String(columns), '-y', String(rows), command);
    await waitFor(ready);
    await sleep(500); // the first frame is drawn a moment before raw-mode input is attached
  }
  function close(): void {
    try { tmux('kill-server'); } catch { /* already gone */ }
    rmSync(join(`/tmp/tmux-${process.getuid?.() ?? 0}`, socket), { force: true });
  }
  return { tmux, screen, waitScreen, waitFor, keys, open, close };
}
