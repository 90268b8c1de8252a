// A sample picture with what made it: step, prompt text, seed and size. Small beside the chart, or large
// over the whole screen (Enter in the Job monitor), where the arrows walk steps and prompts.
import { Box, Text } from 'ink';
import { useThumbnail } from '../../src/hooks/useThumbnail.js';
import type { Sample, SamplePromptInfo } from '../../src/monitor/files.js';
import { StatusBar } from '../components/StatusBar.js';

export interface SampleViewProps {
  sample: Sample | undefined;
  info: SamplePromptInfo | undefined;
  /** How many prompts and steps there are, to say where this one is. */
  prompts: number;
  steps: number[];
  width: number;
  height: number;
}

function caption(p: SampleViewProps): string {
  const s = p.sample!;
  const at = p.steps.indexOf(s.step);
  return `step ${s.step}${at >= 0 ? ` (${at + 1}/${p.steps.length})` : ''} · prompt ${s.prompt + 1}/${Math.max(p.prompts, s.prompt + 1)}`
    + `${p.info?.seed !== null && p.info?.seed !== undefined ? ` · seed ${p.info.seed}` : ''}${p.info?.width ? ` · ${p.info.width}x${p.info.height} px` : ''}`;
}

/** Beside the chart: the picture, then where it is from and its prompt. */
export function SampleSmall(p: SampleViewProps) {
  const infoRows = 3;
  const picture = useThumbnail(p.sample?.file, p.width, Math.max(2, p.height - infoRows - 1));
  if (!p.sample) return <Text dimColor wrap="wrap">no samples yet (they appear every sample_every steps, if the job samples)</Text>;
  return (
    <Box flexDirection="column" width={p.width} height={p.height}>
      <Text wrap="truncate-end">{caption(p)}</Text>
      <Text dimColor wrap="truncate-end">{p.info ? `"${p.info.prompt}"` : ''}</Text>
      {picture !== undefined ? <Text>{picture}</Text> : <Text dimColor>drawing...</Text>}
      <Text dimColor wrap="truncate-end">Enter: large · [ ] step · p prompt</Text>
    </Box>
  );
}

/** The whole screen: caption, prompt, the picture as large as fits, the file. */
export function SampleLarge(p: SampleViewProps) {
  const picture = useThumbnail(p.sample?.file, p.width - 2, Math.max(4, p.height - 6));
  return (
    <Box flexDirection="column" width={p.width} height={p.height}>
      {p.sample ? (
        <>
          <Text bold wrap="truncate-end">{caption(p)}</Text>
          <Text wrap="truncate-end">{p.info ? `"${p.info.prompt}"` : '(prompt unknown: no job.json)'}</Text>
          <Box flexGrow={1} flexDirection="column">{picture !== undefined ? <Text>{picture}</Text> : <Text dimColor>drawing...</Text>}</Box>
          <Text dimColor wrap="truncate-end">{p.sample.file}</Text>
        </>
      ) : <Box flexGrow={1}><Text dimColor>no samples yet</Text></Box>}
      <StatusBar hints={[['←→', 'step'], ['↑↓', 'prompt'], ['Esc Enter', 'back']]} width={p.width} />
    </Box>
  );
}
