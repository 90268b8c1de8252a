// The terminal's size, updated live on resize.
import { useStdout } from 'ink';
import { useEffect, useState } from 'react';

export interface TermSize {
  columns: number;
  rows: number;
}

export function useTerminalSize(override?: TermSize): TermSize {
  const { stdout } = useStdout();
  const read = (): TermSize => ({ columns: stdout.columns || 80, rows: stdout.rows || 24 });
  const [size, setSize] = useState<TermSize>(read);
  useEffect(() => {
    if (override) return undefined;
    const onResize = () => setSize(read());
    stdout.on('resize', onResize);
    return () => { stdout.off('resize', onResize); };
  }, [stdout, override]);
  return override ?? size;
}
