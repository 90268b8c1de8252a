// The loss chart with its legend, y axis labels and step axis (src/monitor/chart.ts draws it).
import { Box, Text } from 'ink';
import { COLORS, formatValue, lossChart } from '../../src/monitor/chart.js';

export const Y_LABEL_W = 8;
/** Rows the view takes besides the chart itself: the legend and the step axis. */
export const CHART_FRAME_ROWS = 2;

export interface LossChartProps {
  steps: number[];
  raw: number[];
  smooth: number[];
  /** The job's total steps: the x axis runs to it. */
  total: number | null;
  log: boolean;
  width: number;
  height: number;
}

export function LossChartView({ steps, raw, smooth, total, log, width, height }: LossChartProps) {
  const chartW = Math.max(10, width - Y_LABEL_W);
  const chart = lossChart({ steps, raw, smooth, xMax: total ?? undefined, log }, chartW, Math.max(2, height));
  const labels = new Map(chart.yLabels.map((l) => [l.row, l.text]));
  const last = raw.length ? raw[raw.length - 1]! : NaN;
  const lastSmooth = smooth.length ? smooth[smooth.length - 1]! : NaN;
  const beyond = [chart.above ? `${chart.above} above` : '', chart.below ? `${chart.below} below` : ''].filter(Boolean).join(', ');
  const right = `step ${chart.xMax}`;
  return (
    <Box flexDirection="column" width={width}>
      <Text wrap="truncate-end">
        <Text bold>loss</Text><Text dimColor>{` ${log ? 'log' : 'linear'} (l) `}</Text>
        <Text color={COLORS.raw}>⡇ raw</Text><Text> </Text><Text color={COLORS.smooth}>⠤⠤ smoothed</Text>
        {beyond ? <Text color={COLORS.outlier}>{` ⠉ ${beyond} the scale`}</Text> : null}
        <Text>{`  last ${formatValue(last)} · smoothed ${formatValue(lastSmooth)}`}</Text>
      </Text>
      {chart.rows.map((row, i) => (
        <Text key={i} wrap="truncate-end"><Text dimColor>{(labels.get(i) ?? '').padStart(Y_LABEL_W - 2)} ┤</Text>{row}</Text>
      ))}
      <Text dimColor wrap="truncate-end">{`${' '.repeat(Y_LABEL_W - 1)}└ step ${chart.xMin}`.padEnd(Y_LABEL_W + chartW - right.length)}{right}</Text>
    </Box>
  );
}
