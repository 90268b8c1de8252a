// The machine beside a job: each GPU's VRAM, load, temperature and power from nvidia-smi, or the CPU and RAM
// when there is no GPU.
import { Box, Text } from 'ink';
import { bar } from '../../src/monitor/chart.js';
import type { SystemStats } from '../../src/monitor/system.js';

/** Lines the panel takes: compact is one line per GPU (or one for "no GPU"). */
export function gpuPanelLines(stats: SystemStats | undefined, compact: boolean): number {
  const n = stats?.gpus?.length ?? 0;
  if (!stats || n === 0) return compact ? 1 : 2;
  return compact ? n : n * 3 + 1;
}

const num = (v: number, digits = 0) => (Number.isFinite(v) ? v.toFixed(digits) : '-');

export function GpuPanel({ stats, width, compact }: { stats: SystemStats | undefined; width: number; compact?: boolean }) {
  if (!stats) return <Text dimColor>reading nvidia-smi...</Text>;
  const cpu = `CPU ${stats.cpuPct === null ? '-' : `${Math.round(stats.cpuPct)}%`}${stats.cores ? ` of ${stats.cores} cores` : ''}`;
  const ram = stats.memUsedMb !== null && stats.memTotalMb !== null ? `RAM ${(stats.memUsedMb / 1024).toFixed(1)}/${(stats.memTotalMb / 1024).toFixed(1)} GiB` : 'RAM -';
  if (!stats.gpus || stats.gpus.length === 0) {
    const why = <Text dimColor>{` (${stats.gpuError ?? 'nvidia-smi lists none'})`}</Text>;
    if (compact) return <Text wrap="truncate-end"><Text color="yellow">no GPU</Text>{why}{` · ${cpu} · ${ram}`}</Text>;
    return (
      <Box flexDirection="column">
        <Text wrap="truncate-end"><Text color="yellow">no GPU</Text>{why}</Text>
        <Text wrap="truncate-end">{`${cpu} · ${ram}`}</Text>
      </Box>
    );
  }
  if (compact) {
    return (
      <Box flexDirection="column">
        {stats.gpus.map((g) => (
          <Text key={g.index} wrap="truncate-end">{`GPU ${g.index} VRAM [${bar(g.memUsedMb / g.memTotalMb, 12)}] ${(g.memUsedMb / 1024).toFixed(1)}/${(g.memTotalMb / 1024).toFixed(0)} GiB · ${num(g.utilPct)}% · ${num(g.tempC)}°C · ${num(g.powerW)} W · ${g.name}`}</Text>
        ))}
      </Box>
    );
  }
  const gw = Math.max(8, Math.min(30, width - 34));
  return (
    <Box flexDirection="column">
      {stats.gpus.map((g) => (
        <Box key={g.index} flexDirection="column">
          <Text wrap="truncate-end"><Text bold>{`GPU ${g.index}`}</Text>{` ${g.name}`}</Text>
          <Text wrap="truncate-end">{`VRAM [${bar(g.memUsedMb / g.memTotalMb, gw)}] ${(g.memUsedMb / 1024).toFixed(1)}/${(g.memTotalMb / 1024).toFixed(0)} GiB`}</Text>
          <Text wrap="truncate-end">{`util ${num(g.utilPct)}% · ${num(g.tempC)}°C · ${num(g.powerW)}/${num(g.powerLimitW)} W`}</Text>
        </Box>
      ))}
      <Text wrap="truncate-end" dimColor>{`${cpu} · ${ram}`}</Text>
    </Box>
  );
}
