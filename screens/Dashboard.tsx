// Dashboard: what exists so far. Live loss curves, VRAM gauges and samples arrive with the queue and trainer.
import { Box, Text } from 'ink';
import type { Gpu } from '../src/gpu.js';
import type { JobRow } from '../src/queue/store.js';
import { StatusBar, type Hint } from './components/StatusBar.js';

export const DASHBOARD_KEYS: Hint[] = [['1-4', 'switch screen'], ['q', 'quit'], ['Ctrl+C', 'quit from anywhere']];

export function Dashboard({ jobs, datasets, gpus, home, width, height }: { jobs: JobRow[]; datasets: number; gpus: Gpu[] | undefined; home: string; width: number; height: number }) {
  const drafts = jobs.filter((j) => j.state === 'draft').length;
  return (
    <Box flexDirection="column" width={width} height={height}>
      <Box flexDirection="column" flexGrow={1} paddingX={1}>
        <Text bold color="cyan">graft <Text dimColor>LoRA training from the terminal</Text></Text>
        <Text> </Text>
        <Text>{`Jobs: ${jobs.length} (${drafts} draft${drafts === 1 ? '' : 's'})   Datasets: ${datasets}`}</Text>
        <Text wrap="truncate-end">{`GPUs: ${gpus === undefined ? 'probing...' : gpus.length === 0 ? 'none found (nvidia-smi)' : gpus.map((g) => `${g.index}: ${g.name} ${Math.round(g.memoryMb / 1024)} GB`).join(', ')}`}</Text>
        <Text dimColor wrap="truncate-end">{`Home: ${home}`}</Text>
        <Text> </Text>
        <Text dimColor wrap="wrap">Live training (loss curves, VRAM, samples) appears here once the queue daemon and trainer land; for now this screen shows what is saved.</Text>
        <Text> </Text>
        <Text>Start with <Text bold>4</Text> Datasets to add a folder, then <Text bold>2</Text> New Job.</Text>
      </Box>
      <StatusBar hints={[['2', 'new job'], ['3', 'queue'], ['4', 'datasets'], ['?', 'help'], ['q', 'quit']]} width={width} />
    </Box>
  );
}
