// State that key handlers read at its latest value. Ink gives each key to the handlers of the last
// render whose effects have run, so keys that come faster than React redraws (an ssh burst split into
// packets, a loaded machine) would see the state as it was before the previous key: text typed over
// ("/data" came out "/ata"), moves lost, a digit typed into a field taken as a screen key.
//
// latest() gives the state after the last whole key: what a key changes is seen from the next key on.
// Every active handler gets each key, so the Enter that closes an input must still read as the input's
// in the form's own handler, or that handler would take it as "open the field" again.
import { useCallback, useRef, useState } from 'react';

export type KeyState<T> = [value: T, set: (next: T | ((prev: T) => T)) => T, latest: () => T];

export function useKeyState<T>(initial: T): KeyState<T> {
  const pending = useRef(initial); // with the changes of the key being handled
  const published = useRef(initial); // as of the last whole key
  const [value, setValue] = useState(initial);
  const set = useCallback((next: T | ((prev: T) => T)) => {
    pending.current = typeof next === 'function' ? (next as (prev: T) => T)(pending.current) : next;
    setValue(pending.current);
    // A key reaches every handler within one synchronous emit; microtasks run after it.
    queueMicrotask(() => { published.current = pending.current; });
    return pending.current;
  }, []);
  const latest = useCallback(() => published.current, []);
  return [value, set, latest];
}
