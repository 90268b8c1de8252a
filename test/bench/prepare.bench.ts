// Preparation speed: 1,000 pictures of 1024x1024 (JPEG, gradients with noise so sizes are like photos'),
// prepared at resolutions [1024, 512]: a first run (decode, resize, PNG) and a second, cached run.
// Run with `make bench-prepare` (or node dist/test/bench/prepare.bench.js [--images N] [--dir D]).
// The pictures are generated once into the folder and reused by later runs; the prepared job is removed.
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { prepareJob } from '../../src/prepare/prepare.js';
import { tinyJobYaml, writeNoiseImage } from '../helpers/dataset.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const count = Number(arg('--images', '1000'));
const root = arg('--dir', '/tmp/graft-bench-prepare');
const data = join(root, `data_${count}`);
const size = 1024;

async function generate(): Promise<void> {
  if (existsSync(data) && readdirSync(data).filter((f) => f.endsWith('.jpg')).length === count) return;
  rmSync(data, { recursive: true, force: true });
  mkdirSync(data, { recursive: true });
  const t = Date.now();
  for (let i = 0; i < count; i++) {
    await writeNoiseImage(join(data, `${String(i).padStart(5, '0')}.jpg`), size, size, i + 1);
    writeFileSync(join(data, `${String(i).padStart(5, '0')}.txt`), `picture number ${i}, a gradient with noise`);
  }
  console.log(`generated ${count} pictures of ${size}x${size} in ${((Date.now() - t) / 1000).toFixed(1)} s: ${data}`);
}

async function main(): Promise<void> {
  await generate();
  const out = join(root, 'out');
  rmSync(out, { recursive: true, force: true });
  const config = join(root, 'bench.yaml');
  writeFileSync(config, tinyJobYaml({ name: 'bench', trainingFolder: out, datasets: [{ folder_path: data, resolution: [1024, 512] }], trigger: 'zxq' }));
  const home = join(root, 'home');
  // CPU seconds of the whole process (libvips threads included) next to wall time: on a shared machine
  // the wall time says as much about the neighbours as about graft.
  const timed = async () => {
    const cpu = process.cpuUsage();
    const summary = await prepareJob(config, { home });
    const used = process.cpuUsage(cpu);
    return { summary, cpu: (used.user + used.system) / 1e6 };
  };
  const first = await timed();
  const second = await timed();
  console.log(`machine: ${availableParallelism()} cores, node ${process.version}`);
  console.log(`first run:  ${first.summary.seconds.toFixed(1)} s wall, ${first.cpu.toFixed(1)} s CPU (${first.summary.images} images -> ${first.summary.items} items, ${first.summary.written} PNGs written)`);
  console.log(`second run: ${second.summary.seconds.toFixed(1)} s wall, ${second.cpu.toFixed(1)} s CPU (${second.summary.reused} PNGs reused, ${second.summary.written} written)`);
  rmSync(out, { recursive: true, force: true });
}

await main();
