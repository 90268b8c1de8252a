// A one-line text input: arrows, Home/End, Backspace/Delete, Ctrl+U clears, Tab completes, Enter accepts, Esc cancels.
import { Text, useInput } from 'ink';
import { useKeyState } from '../../src/hooks/useKeyState.js';

export interface TextInputProps {
  initial: string;
  width: number;
  isActive?: boolean;
  onChange?: (value: string) => void;
  onSubmit: (value: string) => void;
  onCancel: () => void;
  /** Tab: return the completed value and the candidates to show. */
  onComplete?: (value: string) => { value: string; candidates: string[] };
  onCandidates?: (candidates: string[]) => void;
}

export function TextInput(props: TextInputProps) {
  // Each key starts from the text the key before it left, drawn or not (useKeyState).
  const [text, setText, latest] = useKeyState({ value: props.initial, cursor: props.initial.length });
  const set = (value: string, cursor: number) => setText({ value, cursor: Math.max(0, Math.min(value.length, cursor)) });
  const setCursor = (c: number) => set(latest().value, c);
  const update = (v: string, c: number) => {
    set(v, c);
    props.onChange?.(v);
  };

  useInput((input, key) => {
    const { value, cursor } = latest();
    if (key.return) return props.onSubmit(value);
    if (key.escape) return props.onCancel();
    if (key.tab && props.onComplete) {
      const done = props.onComplete(value);
      props.onCandidates?.(done.candidates);
      return update(done.value, done.value.length);
    }
    if (key.leftArrow) return setCursor(Math.max(0, cursor - 1));
    if (key.rightArrow) return setCursor(Math.min(value.length, cursor + 1));
    if (key.home || (key.ctrl && input === 'a')) return setCursor(0);
    if (key.end || (key.ctrl && input === 'e')) return setCursor(value.length);
    if (key.ctrl && input === 'u') return update('', 0);
    if (key.backspace || (key.delete && input === '')) {
      // Most terminals send DEL (0x7f) for Backspace, which Ink reports as delete.
      if (cursor === 0) return undefined;
      return update(value.slice(0, cursor - 1) + value.slice(cursor), cursor - 1);
    }
    if (key.ctrl || key.meta || key.tab || key.upArrow || key.downArrow || key.pageUp || key.pageDown) return undefined;
    // One key at a time: the TUI's input (src/tui/keyFeed.ts) splits what a read delivers (a paste, an ssh
    // burst) into keys, so Enter and Tab in it reach the branches above.
    const typed = input.replace(/[\x00-\x1f\x7f]/g, '');
    if (typed) update(value.slice(0, cursor) + typed + value.slice(cursor), cursor + typed.length);
    return undefined;
  }, { isActive: props.isActive ?? true });

  // Keep the cursor visible inside the given width.
  const { value, cursor } = text;
  const w = Math.max(4, props.width);
  const start = Math.max(0, cursor - w + 1);
  const shown = value.slice(start, start + w);
  const at = cursor - start;
  return (
    <Text>
      {shown.slice(0, at)}
      <Text inverse>{shown[at] ?? ' '}</Text>
      {shown.slice(at + 1)}
    </Text>
  );
}
