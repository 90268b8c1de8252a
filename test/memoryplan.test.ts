// The New Job form's memory estimate: the form's settings become the trainer's memory-plan options, and
// the trainer's plan (the same one it stops on before step 1) answers them, on the demo model's files
// and on FLUX.1-dev's shapes.
import { describe, expect, it } from 'vitest';
import { newJobDoc, procPath, type JobDoc } from '../src/config/document.js';
import { memoryPlanArgs, planSummary, runMemoryPlan, type MemoryPlan } from '../src/config/memoryPlan.js';
import { loadPresets, presetById } from '../src/presets.js';
import { setAt } from '../src/util/objpath.js';

const presets = loadPresets();
const P = procPath;
const doc = (family: string): JobDoc => setAt(newJobDoc(presetById(family, presets)!, '/tmp/out', 'job1'), P('datasets', 0, 'folder_path'), '/data/set');
const args = (d: JobDoc) => {
  const r = memoryPlanArgs(d, presets);
  if (!('args' in r)) throw new Error(r.none);
  return r.args;
};
const opt = (a: string[], k: string) => a[a.indexOf(k) + 1];
const weights = (p: MemoryPlan) => p.training.filter((l) => l.what.startsWith('transformer')).reduce((s, l) => s + l.bytes, 0);
const quantized = (d: JobDoc, qtype: string) => setAt(setAt(d, P('model', 'quantize'), true), P('model', 'qtype'), qtype);

describe('the memory estimate', () => {
  it('asks the trainer about the job as it would run', () => {
    const demo = args(doc('graft_tiny'));
    expect(opt(demo, '--model')).toMatch(/presets\/graft-tiny$/);
    expect(opt(demo, '--device')).toBe('cpu');
    expect(opt(demo, '--quantize')).toBe('none');
    expect(opt(demo, '--resolution')).toBe('32');
    expect(opt(args(quantized(doc('graft_tiny'), 'uint4')), '--quantize')).toBe('nf4');
    expect(opt(args(quantized(doc('graft_tiny'), 'uint6')), '--quantize')).toBe('int8');
    const flux = args(setAt(doc('flux1'), P('model', 'name_or_path'), 'black-forest-labs/FLUX.1-schnell'));
    expect(opt(flux, '--model')).toBe('schnell');
    expect(opt(flux, '--device')).toBe('cuda:0');
    expect(flux).toContain('--checkpointing');
    const none = memoryPlanArgs(doc('wan22_14b_t2v'), presets);
    expect('none' in none && none.none).toMatch(/does not train Wan 2\.2 T2V 14B yet/);
  });

  it('the demo model: a plan from its files, each format smaller than the last', async () => {
    const plans: MemoryPlan[] = [];
    for (const q of ['none', 'qfloat8', 'uint4']) {
      const d = doc('graft_tiny');
      plans.push(await runMemoryPlan(args(q === 'none' ? d : quantized(d, q))));
    }
    for (const p of plans) expect(p.total > 0 && p.available > 0 && p.fits).toBe(true);
    expect(weights(plans[1]!)).toBeLessThan(0.6 * weights(plans[0]!));
    expect(weights(plans[2]!)).toBeLessThan(weights(plans[1]!));
    expect(planSummary(plans[0]!)).toMatch(/^needs ~\d+ MiB of [\d.]+ GiB free: weights/);
  });

  it('FLUX.1-dev on CUDA without a GPU here: the plan still counts, with the settings that would make it fit', async () => {
    const fp8 = await runMemoryPlan(args(doc('flux1')));
    expect(fp8.available).toBe(0);  // no device to ask: unknown, not "does not fit"
    expect(fp8.fits).toBe(true);
    const gb = (b: number) => b / 2 ** 30;
    expect(gb(weights(fp8))).toBeGreaterThan(10);
    expect(gb(weights(fp8))).toBeLessThan(12);
    const nf4 = await runMemoryPlan(args(quantized(doc('flux1'), 'uint4')));
    expect(gb(weights(nf4))).toBeLessThan(0.6 * gb(weights(fp8)));
    const streamed = await runMemoryPlan(args(setAt(doc('flux1'), P('model', 'layer_offloading'), true)));
    expect(streamed.training_total).toBeLessThan(0.5 * fp8.training_total);  // every block in host memory, two at a time on the device
    const tight = await runMemoryPlan(args(setAt(doc('flux1'), P('model', 'quantize'), false)), { ...process.env, GRAFT_DEVICE_MEMORY: String(20 * 2 ** 30) });
    expect(tight.fits).toBe(false);
    expect(tight.fixes.join(' ')).toMatch(/model\.qtype: qfloat8/);
    expect(planSummary(tight)).toMatch(/does not fit — would with /);
  });

  it('Z-Image Turbo at its real shapes: the 6B transformer in fp8 (the preset default) with Qwen3-4B to encode', async () => {
    const a = args(doc('zimage_turbo'));
    expect(opt(a, '--model')).toBe('zimage');
    const fp8 = await runMemoryPlan(a);
    const gb = (b: number) => b / 2 ** 30;
    // 6.2B linear weights: about 5.7 GiB in fp8, 11.5 GiB in bf16; Qwen3-4B's first 35 layers, the text encoder.
    expect(gb(weights(fp8))).toBeGreaterThan(5.5);
    expect(gb(weights(fp8))).toBeLessThan(7);
    const bf16 = await runMemoryPlan(args(setAt(doc('zimage_turbo'), P('model', 'quantize'), false)));
    expect(gb(weights(bf16))).toBeGreaterThan(11);
    expect(fp8.encoding_total).toBeGreaterThan(0);
  });
});
