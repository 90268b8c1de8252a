// A picker: Up/Down (j/k) move, Enter chooses, Esc cancels. Shows a window of the options around the cursor.
import { Box, Text, useInput } from 'ink';
import { useState } from 'react';
import type { Option } from '../../src/config/fields.js';

export interface SelectListProps {
  title: string;
  options: Option[];
  initialValue?: string;
  height: number;
  width: number;
  onSelect: (value: string) => void;
  onCancel: () => void;
}

export function SelectList(props: SelectListProps) {
  const first = Math.max(0, props.options.findIndex((o) => o.value === props.initialValue));
  const [index, setIndex] = useState(first);
  const n = props.options.length;
  useInput((input, key) => {
    if (key.escape) return props.onCancel();
    if (key.return && n > 0) return props.onSelect(props.options[index]!.value);
    if (key.upArrow || input === 'k') setIndex((i) => (i - 1 + n) % n);
    if (key.downArrow || input === 'j') setIndex((i) => (i + 1) % n);
    if (key.pageUp) setIndex((i) => Math.max(0, i - (props.height - 2)));
    if (key.pageDown) setIndex((i) => Math.min(n - 1, i + (props.height - 2)));
    return undefined;
  });
  const rows = Math.max(1, props.height - 3); // borders and the title line
  const start = Math.max(0, Math.min(index - Math.floor(rows / 2), n - rows));
  const visible = props.options.slice(start, start + rows);
  return (
    <Box flexDirection="column" borderStyle="round" borderColor="cyan" width={props.width} height={props.height} paddingX={1}>
      <Text bold color="cyan">{props.title} <Text dimColor>({index + 1}/{n}, Enter choose, Esc cancel)</Text></Text>
      {visible.map((o, i) => {
        const selected = start + i === index;
        return (
          <Text key={o.value} inverse={selected} wrap="truncate-end">
            {selected ? '> ' : '  '}{o.label}{o.note ? <Text dimColor={!selected}>  {o.note}</Text> : null}
          </Text>
        );
      })}
    </Box>
  );
}
