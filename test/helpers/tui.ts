// The TUI as graft starts it (src/tui/render.ts: KeyFeed on stdin, ScreenWriter on stdout, Ink at its frame
// rate), on a terminal of a given size made of a fake TTY and a VirtualScreen. A test writes raw bytes to
// stdin, several keys in one write if it likes, and reads the screen a user would see.
import { EventEmitter } from 'node:events';
import type { ReactElement } from 'react';
import { renderTui, type Tui } from '../../src/tui/render.js';
import { tick } from './ink.js';
import { VirtualScreen } from './vt.js';

class FakeStdin extends EventEmitter {
  isTTY = true;
  private data: string | null = null;
  write(data: string): void {
    this.data = data;
    this.emit('readable');
  }
  read(): string | null {
    const d = this.data;
    this.data = null;
    return d;
  }
  setRawMode(): void {}
  setEncoding(): void {}
  ref(): void {}
  unref(): void {}
}

class FakeStdout extends EventEmitter {
  isTTY = true;
  bytes = 0;
  clears = 0;
  constructor(readonly columns: number, readonly rows: number, private readonly screen: VirtualScreen) { super(); }
  write(data: string): boolean {
    this.bytes += Buffer.byteLength(data);
    this.clears += data.split('\u001B[2J').length - 1;
    this.screen.write(data);
    return true;
  }
}

export interface TuiHarness {
  /** One write to stdin, as one read from a terminal: several keys may be in it. */
  type: (data: string) => void;
  screen: () => string;
  waitFor: (ok: (screen: string) => boolean, what: string, timeoutMs?: number) => Promise<string>;
  /** Wait until the screen has not changed for ms. */
  settled: (ms?: number) => Promise<string>;
  bytes: () => number;
  /** Full-screen clears written so far. */
  clears: () => number;
  tui: Tui;
  unmount: () => void;
}

export async function startTui(element: ReactElement, columns: number, rows: number): Promise<TuiHarness> {
  const vt = new VirtualScreen(columns, rows);
  const stdin = new FakeStdin();
  const stdout = new FakeStdout(columns, rows, vt);
  const tui = renderTui(element, { stdin, stdout: stdout as unknown as NodeJS.WriteStream });
  const screen = () => vt.text();
  const waitFor = async (ok: (s: string) => boolean, what: string, timeoutMs = 10_000) => {
    const start = Date.now();
    for (;;) {
      const s = screen();
      if (ok(s)) return s;
      if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}; screen:\n${s}`);
      await tick(20);
    }
  };
  const settled = async (ms = 300) => {
    let last = screen();
    let since = Date.now();
    const start = Date.now();
    while (Date.now() - since < ms && Date.now() - start < 10_000) {
      await tick(20);
      const s = screen();
      if (s !== last) { last = s; since = Date.now(); }
    }
    return last;
  };
  await settled(150);
  return {
    type: (data) => stdin.write(data),
    screen,
    waitFor,
    settled,
    bytes: () => stdout.bytes,
    clears: () => stdout.clears,
    tui,
    unmount: () => tui.app.unmount(),
  };
}
