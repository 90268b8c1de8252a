// The TUI's stdin: one key at a time, each after the screen has taken the previous one in.
//
// Ink hands a whole read to its key handlers at once, and a handler sees the state of the last render: with
// `Down Enter X` in one read, Enter still acted on the field before Down and X went to no input at all (the
// input that Enter opens subscribes to keys only once React has run its effects); `jjj` arrived as one
// "jjj" that no handler knows. KeyFeed sits between the terminal and Ink: it splits each read into keys
// (splitKeys) and passes them on one per turn, the next only when React's scheduler is idle, which is
// after the render, the effects and the subscriptions that the previous key caused.
import { EventEmitter } from 'node:events';
import { unstable_IdlePriority as IdlePriority, unstable_scheduleCallback as scheduleCallback } from 'scheduler';
import { splitKeys } from './keys.js';

/** What KeyFeed needs of a terminal's input: process.stdin, or a test's stand-in. */
export interface KeySource extends EventEmitter {
  isTTY?: boolean;
  read(): string | Buffer | null;
  setRawMode?(mode: boolean): unknown;
  setEncoding?(encoding: BufferEncoding): unknown;
  ref?(): unknown;
  unref?(): unknown;
}

// How long an escape sequence cut off at the end of a read waits for its rest: an Escape key press arrives
// alone, and must not wait for a key that may never come.
const PARTIAL_SEQUENCE_MS = 5;

export class KeyFeed extends EventEmitter {
  readonly isTTY: boolean;
  private queue: string[] = [];
  private partial = '';
  private current: string | null = null;
  private busy = false;
  private attached = false;
  private partialTimer: NodeJS.Timeout | undefined;

  constructor(private readonly source: KeySource) {
    super();
    this.isTTY = source.isTTY === true;
    // Read from the terminal only while someone (Ink) listens for keys.
    this.on('newListener', (event) => { if (event === 'readable' && !this.attached) this.attach(); });
    this.on('removeListener', (event) => { if (event === 'readable' && this.listenerCount('readable') === 0) this.detach(); });
  }

  private readonly onSourceReadable = () => {
    let chunk;
    let text = this.partial;
    while ((chunk = this.source.read()) !== null) text += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
    this.take(text);
  };

  private attach(): void {
    this.attached = true;
    this.source.on('readable', this.onSourceReadable);
  }

  private detach(): void {
    this.attached = false;
    this.source.off('readable', this.onSourceReadable);
  }

  private take(text: string): void {
    if (this.partialTimer) clearTimeout(this.partialTimer);
    const { keys, rest } = splitKeys(text);
    this.queue.push(...keys);
    this.partial = rest;
    if (rest !== '') {
      this.partialTimer = setTimeout(() => {
        this.partialTimer = undefined;
        const whole = this.partial;
        this.partial = '';
        if (whole !== '') { this.queue.push(whole); this.pump(); }
      }, PARTIAL_SEQUENCE_MS);
    }
    this.pump();
  }

  private pump(): void {
    if (this.busy || this.queue.length === 0) return;
    this.busy = true;
    this.current = this.queue.shift()!;
    this.emit('readable');
    this.current = null;
    // setImmediate first: Ink turns a lone Escape into a key in a setImmediate of its own, which must run
    // before the next key reaches it. Then an idle-priority task, which React's scheduler runs only after
    // every render and effect already scheduled.
    setImmediate(() => scheduleCallback(IdlePriority, () => {
      this.busy = false;
      this.pump();
    }));
  }

  /** Ink reads the key being delivered, then null. */
  read(): string | null {
    const key = this.current;
    this.current = null;
    return key;
  }

  setRawMode(mode: boolean): this {
    this.source.setRawMode?.(mode);
    return this;
  }

  setEncoding(encoding: BufferEncoding): this {
    this.source.setEncoding?.(encoding);
    return this;
  }

  ref(): this {
    this.source.ref?.();
    return this;
  }

  unref(): this {
    this.source.unref?.();
    return this;
  }
}
