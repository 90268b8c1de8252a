// Thumbnails as ANSI half-block text, drawn inside Ink's frame (native image protocols would write past it).
// terminal-image (and its image decoder) loads on first use: it would add seconds to graft's start.
import { readFile } from 'node:fs/promises';

let loader: Promise<typeof import('terminal-image')> | undefined;

export async function renderThumbnail(file: string, width: number, height: number): Promise<string> {
  loader ??= import('terminal-image');
  const [{ default: terminalImage }, data] = await Promise.all([loader, readFile(file)]);
  return terminalImage.buffer(data, { width, height, preserveAspectRatio: true, preferNativeRender: false });
}
