// `?`: every key of the current screen, plus the keys that work everywhere; in two columns when one
// does not fit the terminal's height (New Job at 80x24).
import { Box, Text } from 'ink';
import type { Hint } from './components/StatusBar.js';

export const GLOBAL_KEYS: Hint[] = [
  ['1 2 3 4 5', 'Dashboard, New Job, Training Queue, Datasets, Job monitor'], ['?', 'this help'],
  ['q Esc', 'back (q on the Dashboard quits)'], ['Ctrl+C', 'quit from anywhere (asks first when New Job has unsaved edits)'],
];

type Line = { kind: 'key'; hint: Hint } | { kind: 'title'; text: string } | { kind: 'blank' };

export function Help({ title, keys, width, height }: { title: string; keys: Hint[]; width: number; height: number }) {
  const lines: Line[] = [...keys.map((hint) => ({ kind: 'key' as const, hint })), { kind: 'blank' }, { kind: 'title', text: 'Everywhere' }, ...GLOBAL_KEYS.map((hint) => ({ kind: 'key' as const, hint }))];
  const room = Math.max(1, height - 3); // border and the title line
  const columns = lines.length > room ? 2 : 1;
  const perColumn = Math.ceil(lines.length / columns);
  const colW = Math.floor((width - 4) / columns);
  const keyW = Math.max(...[...keys, ...GLOBAL_KEYS].map(([k]) => k.length)) + 2;
  const render = (l: Line, i: number) => {
    if (l.kind === 'blank') return <Text key={i}> </Text>;
    if (l.kind === 'title') return <Text key={i} bold color="cyan">{l.text}</Text>;
    return <Text key={i} wrap="truncate-end"><Text bold>{l.hint[0].padEnd(keyW)}</Text>{l.hint[1]}</Text>;
  };
  return (
    <Box flexDirection="column" width={width} height={height} borderStyle="round" borderColor="cyan" paddingX={1}>
      <Text bold color="cyan">Keys: {title} <Text dimColor>(any key closes)</Text></Text>
      <Box flexDirection="row">
        {Array.from({ length: columns }, (_, c) => (
          <Box key={c} flexDirection="column" width={colW}>{lines.slice(c * perColumn, (c + 1) * perColumn).map(render)}</Box>
        ))}
      </Box>
    </Box>
  );
}
