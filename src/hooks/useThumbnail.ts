// A picture as terminal text (half blocks), drawn in the background: undefined until it is ready, or an
// "(cannot draw: ...)" line when the file cannot be read.
import { useEffect, useState } from 'react';
import { renderThumbnail } from '../datasets/thumbnail.js';

export function useThumbnail(file: string | undefined, width: number, height: number): string | undefined {
  const key = file && width > 0 && height > 0 ? `${file}:${width}x${height}` : '';
  const [drawn, setDrawn] = useState<{ key: string; text: string }>();
  useEffect(() => {
    if (!key || !file) return undefined;
    let live = true;
    void renderThumbnail(file, width, height)
      .catch((e: Error) => `(cannot draw: ${e.message})`)
      .then((text) => { if (live) setDrawn({ key, text }); });
    return () => { live = false; };
  }, [key]);
  return drawn?.key === key ? drawn.text : undefined;
}
