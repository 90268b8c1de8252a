// Ink on a terminal the way graft draws it: keys one at a time (KeyFeed), only changed rows written
// (ScreenWriter), a few frames a second at most. The CLI and the end-to-end tests start the TUI through here.
import { render, type Instance } from 'ink';
import type { ReactElement } from 'react';
import { KeyFeed, type KeySource } from './keyFeed.js';
import { diffingStdout, type ScreenWriter } from './screenWriter.js';

/** Frames per second at most: a training job's numbers change a few times a second; keys still draw at once. */
export const MAX_FPS = 8;

export interface Tui {
  app: Instance;
  writer: ScreenWriter;
}

export function renderTui(element: ReactElement, io: { stdin: KeySource; stdout: NodeJS.WriteStream }): Tui {
  const feed = new KeyFeed(io.stdin);
  const { stream, writer } = diffingStdout(io.stdout);
  const app = render(element, {
    stdin: feed as unknown as NodeJS.ReadStream,
    stdout: stream,
    // The App asks before quitting with unsaved edits, so Ctrl+C is a key it handles.
    exitOnCtrlC: false,
    patchConsole: false,
    maxFps: MAX_FPS,
  });
  return { app, writer };
}
