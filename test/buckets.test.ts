import { describe, expect, it } from 'vitest';
import { bucketFor, bucketHistogram } from '../src/datasets/buckets.js';

describe('bucketFor (SPEC.md section 6)', () => {
  it('never upscales: 900x900 with 768 and 1024 enabled goes to 768x768', () => {
    expect(bucketFor({ width: 900, height: 900 }, [768, 1024], 16)).toEqual({ width: 768, height: 768 });
  });
  it('1200x1200 goes to 1024x1024', () => {
    expect(bucketFor({ width: 1200, height: 1200 }, [768, 1024], 16)).toEqual({ width: 1024, height: 1024 });
  });
  it('keeps the aspect ratio and rounds sides down to the divisibility', () => {
    expect(bucketFor({ width: 1600, height: 900 }, [512, 768, 1024], 16)).toEqual({ width: 1360, height: 768 });
    expect(bucketFor({ width: 1600, height: 900 }, [1024], 32)).toEqual({ width: 1344, height: 768 });
    expect(bucketFor({ width: 1600, height: 900 }, [1024], 8)).toEqual({ width: 1360, height: 768 });
  });
  it('an image smaller than every resolution keeps its size, rounded down', () => {
    expect(bucketFor({ width: 600, height: 600 }, [768, 1024], 16)).toEqual({ width: 592, height: 592 });
  });
});

describe('bucketHistogram', () => {
  it('counts images per bucket, largest first', () => {
    const h = bucketHistogram([
      { width: 1200, height: 1200 }, { width: 2000, height: 2000 }, { width: 900, height: 900 }, { width: 1600, height: 900 },
    ], [768, 1024], 16);
    expect(h.map((b) => [b.bucket, b.count])).toEqual([['1024x1024', 2], ['1360x768', 1], ['768x768', 1]]); // by area: 1,048,576 > 1,044,480
  });
});
