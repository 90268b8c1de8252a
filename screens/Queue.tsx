// Training Queue: the jobs saved so far. Starting, stopping and reordering arrive with the queue daemon.
import { Box, Text, useInput } from 'ink';
import { useState } from 'react';
import type { JobRow } from '../src/queue/store.js';
import { MessageLine, StatusBar, type Hint } from './components/StatusBar.js';

export const QUEUE_KEYS: Hint[] = [['↑↓ j/k', 'choose a job'], ['Enter', 'open the job in New Job'], ['Esc', 'back']];

export function Queue({ jobs, active, width, height, onOpen }: { jobs: JobRow[]; active: boolean; width: number; height: number; onOpen: (job: JobRow) => void }) {
  const [index, setIndex] = useState(0);
  useInput((input, key) => {
    if (key.upArrow || input === 'k') setIndex((i) => Math.max(0, i - 1));
    if (key.downArrow || input === 'j') setIndex((i) => Math.min(jobs.length - 1, i + 1));
    if (key.return && jobs[index]) onOpen(jobs[index]!);
  }, { isActive: active });
  if (!active) return null;
  const rows = Math.max(1, height - 5);
  const start = Math.max(0, Math.min(index - Math.floor(rows / 2), jobs.length - rows));
  const nameW = Math.min(32, Math.floor(width * 0.3));
  return (
    <Box flexDirection="column" width={width} height={height}>
      <Text bold color="cyan">TRAINING QUEUE <Text dimColor>({jobs.length} job{jobs.length === 1 ? '' : 's'}; start / stop / reorder come with the queue daemon, not built yet)</Text></Text>
      <Text dimColor wrap="truncate-end">{'  #   state     gpu  '}{'name'.padEnd(nameW)}  config</Text>
      <Box flexDirection="column" height={rows}>
        {jobs.length === 0 ? <Text dimColor>No jobs yet. Set one up in New Job (2) and press s to save it as a draft.</Text> : null}
        {jobs.slice(start, start + rows).map((j, i) => (
          <Text key={j.id} inverse={start + i === index} wrap="truncate-end">
            {`${String(j.id).padStart(3)}  ${j.state.padEnd(9)} ${String(j.gpu).padStart(3)}  ${j.name.padEnd(nameW).slice(0, nameW)}  ${j.config_path}`}
          </Text>
        ))}
      </Box>
      <MessageLine text={jobs[index] ? `updated ${jobs[index]!.updated_at}` : ' '} width={width} />
      <StatusBar hints={[['↑↓', 'job'], ['Enter', 'open'], ['?', 'help'], ['q', 'back']]} width={width} />
    </Box>
  );
}
