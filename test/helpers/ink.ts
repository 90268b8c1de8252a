// Driving Ink screens from tests: key codes and a press() that waits for React to settle between keys.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPresets } from '../../src/presets.js';
import { Store } from '../../src/queue/store.js';

export const KEY = {
  up: '\u001B[A',
  down: '\u001B[B',
  right: '\u001B[C',
  left: '\u001B[D',
  enter: '\r',
  escape: '\u001B',
  tab: '\t',
  shiftTab: '\u001B[Z',
  backspace: '\u007F',
  ctrlU: '\u0015',
  pageDown: '\u001B[6~',
} as const;

export const tick = (ms = 30) => new Promise((r) => setTimeout(r, ms));

export interface Writable {
  write: (data: string) => void;
}

export interface Rendered {
  stdin: Writable;
  frames: string[];
}

/**
 * Send keys one at a time, as a person would type them: after each key wait for Ink to draw the new frame
 * (this machine is slow and shared, so a fixed sleep is not enough), then a moment for effects to rebind input.
 */
export async function press(r: Rendered, ...keys: string[]): Promise<void> {
  for (const k of keys) {
    const before = r.frames.length;
    r.stdin.write(k);
    const start = Date.now();
    while (r.frames.length === before && Date.now() - start < 400) await tick(2);
    await tick(k === KEY.escape ? 40 : 8);
  }
}

/** Wait until the frame satisfies a condition (async scans, thumbnails), or fail with the last frame. */
export async function waitFor(frame: () => string | undefined, ok: (f: string) => boolean, timeoutMs = 10_000): Promise<string> {
  const start = Date.now();
  for (;;) {
    const f = frame() ?? '';
    if (ok(f)) return f;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting; last frame:\n${f}`);
    await tick(20);
  }
}

export interface Env {
  home: string;
  store: Store;
  presets: ReturnType<typeof loadPresets>;
  cleanup: () => void;
}

export function testEnv(): Env {
  const home = mkdtempSync(join(tmpdir(), 'graft-home-'));
  const store = new Store(home);
  return {
    home,
    store,
    presets: loadPresets(),
    cleanup: () => { store.close(); rmSync(home, { recursive: true, force: true }); },
  };
}

/** A frame with its line breaks, box sides and runs of spaces collapsed, for messages that wrap. */
export function flat(frame: string | undefined): string {
  return plain(frame).replace(/│/g, ' ').replace(/\s+/g, ' ');
}

/** A frame without colours and attributes. */
export function plain(frame: string | undefined): string {
  return (frame ?? '').replace(/\u001B\[[0-9;]*m/g, '');
}

/** Render and give Ink a moment to attach its input handlers before the first key. */
export async function settle(): Promise<void> {
  await tick(60);
}
