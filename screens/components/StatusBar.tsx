// The bottom line: every action of the current view as "key label", like k9s and lazygit.
import { Box, Text } from 'ink';

export type Hint = [key: string, label: string];

export function StatusBar({ hints, width }: { hints: Hint[]; width: number }) {
  return (
    <Box width={width} height={1}>
      <Text wrap="truncate-end">
        {hints.map(([k, label], i) => (
          <Text key={`${k}-${i}`}>
            <Text color="black" backgroundColor="cyan">{` ${k} `}</Text>
            <Text>{` ${label} `}</Text>
          </Text>
        ))}
      </Text>
    </Box>
  );
}

export function MessageLine({ level, text, width }: { level?: 'info' | 'warning' | 'error'; text?: string; width: number }) {
  const color = level === 'error' ? 'red' : level === 'warning' ? 'yellow' : 'green';
  return (
    <Box width={width} height={1}>
      <Text color={color} wrap="truncate-end">{text ?? ' '}</Text>
    </Box>
  );
}
