// What reaches the terminal: only the lines that changed since the last frame.
//
// The TUI fills the terminal, and Ink repaints a frame that fills the terminal by clearing the screen and
// writing every line again (its log-update cannot move up past the top row). A Job monitor at 170x50 sent
// 575 KB and 42 full clears in 10 s. This wrapper around stdout takes each such frame apart and writes only
// what differs from the previous frame: in each changed row, the cells from the first change to the last, at
// their absolute position; anything else Ink writes
// (cursor visibility, synchronized-output brackets, its very first frame) passes through unchanged.
import type { WriteStream } from 'node:tty';
import { rowPatch } from './cells.js';

const ESC = '\u001B[';
/** ansi-escapes' clearTerminal: erase the screen and the scrollback, cursor home. Ink starts each full frame with it. */
export const CLEAR_TERMINAL = `${ESC}2J${ESC}3J${ESC}H`;
// Writes that change no cell: private modes such as cursor show/hide and synchronized output (?2026h/l).
const MODES_ONLY = /^(?:\u001B\[\?\d+[hl])+$/;

export interface FrameStats {
  /** Frames Ink produced. */
  frames: number;
  /** Rows rewritten, over all frames. */
  rows: number;
}

export class ScreenWriter {
  private previous: string[] | undefined;
  readonly stats: FrameStats = { frames: 0, rows: 0 };

  constructor(private readonly out: { write: (s: string) => unknown }) {}

  /** The rows of the last frame, as Ink drew them (with colour codes); undefined when unknown. */
  screen(): readonly string[] | undefined {
    return this.previous;
  }

  /** Forget what is on the screen: the next frame is written whole (after a resize, or anything unknown). */
  invalidate(): void {
    this.previous = undefined;
  }

  write(data: string): void {
    if (!data.startsWith(CLEAR_TERMINAL)) {
      if (!MODES_ONLY.test(data)) this.invalidate();
      this.out.write(data);
      return;
    }
    const lines = data.slice(CLEAR_TERMINAL.length).split('\n');
    this.stats.frames++;
    const prev = this.previous;
    if (!prev) {
      this.stats.rows += lines.length;
      this.out.write(data);
    } else {
      let s = '';
      lines.forEach((line, i) => {
        if (line === prev[i]) return;
        this.stats.rows++;
        // The changed cells of the row; the whole row when its cells cannot be told apart. Then the row is
        // erased first and written: an erase after a row that fills the last column would take that
        // column's character with it (the cursor waits there to wrap).
        const patch = prev[i] === undefined ? undefined : rowPatch(prev[i]!, line, i + 1);
        s += patch ?? `${ESC}${i + 1};1H${ESC}2K${line}`;
      });
      if (lines.length < prev.length) s += `${ESC}${lines.length + 1};1H${ESC}J`;
      // The cursor ends on the last row, as after a full frame: Ink's relative moves (eraseLines) count rows
      // from there. Its next frame starts with a clear again, so the column does not matter.
      if (s !== '') this.out.write(`${s}${ESC}${lines.length};1H`);
    }
    this.previous = lines;
  }
}

/**
 * stdout as Ink should see it: the same stream (size, TTY, resize events) whose write() goes through a
 * ScreenWriter. A resize forgets the screen, since the terminal may have moved or cut what was on it.
 */
export function diffingStdout<T extends Pick<WriteStream, 'write' | 'on'>>(stdout: T): { stream: T; writer: ScreenWriter } {
  const writer = new ScreenWriter({ write: (s) => stdout.write(s) });
  stdout.on('resize', () => writer.invalidate());
  const write = (chunk: unknown, ...rest: unknown[]) => {
    writer.write(typeof chunk === 'string' ? chunk : String(chunk));
    const cb = rest.find((r): r is () => void => typeof r === 'function');
    cb?.();
    return true;
  };
  const stream = new Proxy(stdout, {
    get(target, prop) {
      if (prop === 'write') return write;
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { stream, writer };
}
