// `?`: every key of the current screen, plus the keys that work everywhere.
import { Box, Text } from 'ink';
import type { Hint } from './components/StatusBar.js';

const GLOBAL: Hint[] = [['1 2 3 4', 'Dashboard, New Job, Training Queue, Datasets'], ['?', 'this help'], ['q Esc', 'back (q on the Dashboard quits)'], ['Ctrl+C', 'quit from anywhere']];

export function Help({ title, keys, width, height }: { title: string; keys: Hint[]; width: number; height: number }) {
  const keyW = Math.max(...[...keys, ...GLOBAL].map(([k]) => k.length)) + 2;
  return (
    <Box flexDirection="column" width={width} height={height} borderStyle="round" borderColor="cyan" paddingX={1}>
      <Text bold color="cyan">Keys: {title} <Text dimColor>(any key closes)</Text></Text>
      {keys.map(([k, label]) => <Text key={k} wrap="truncate-end"><Text bold>{k.padEnd(keyW)}</Text>{label}</Text>)}
      <Text> </Text>
      <Text bold color="cyan">Everywhere</Text>
      {GLOBAL.map(([k, label]) => <Text key={k} wrap="truncate-end"><Text bold>{k.padEnd(keyW)}</Text>{label}</Text>)}
    </Box>
  );
}
