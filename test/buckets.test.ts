import { describe, expect, it } from 'vitest';
import { bucketFor, bucketHistogram, bucketsFor, centreCrop } from '../src/datasets/buckets.js';

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
  it('counts every bucket an image trains at, largest first', () => {
    const h = bucketHistogram([
      { width: 1200, height: 1200 }, { width: 2000, height: 2000 }, { width: 900, height: 900 }, { width: 1600, height: 900 },
    ], [768, 1024], 16);
    // 1200 and 2000 train at 768 and 1024, 900 at 768 only, 1600x900 at 1360x768 and 1024x576; by area: 1,048,576 > 1,044,480.
    expect(h.map((b) => [b.bucket, b.count])).toEqual([['1024x1024', 2], ['1360x768', 1], ['1024x576', 1], ['768x768', 3]]); // equal areas: wider first
  });
});

describe('bucketsFor: one bucket per listed resolution the image reaches', () => {
  it('900x900 with 768 and 1024 trains at 768x768 only; 1200x1200 at both', () => {
    expect(bucketsFor({ width: 900, height: 900 }, [768, 1024], 16)).toEqual([{ width: 768, height: 768 }]);
    expect(bucketsFor({ width: 1200, height: 1200 }, [1024, 768], 16)).toEqual([{ width: 768, height: 768 }, { width: 1024, height: 1024 }]);
  });
  it('keeps the aspect ratio of a non-square image at every resolution', () => {
    expect(bucketsFor({ width: 1600, height: 900 }, [512, 1024], 16)).toEqual([{ width: 672, height: 384 }, { width: 1360, height: 768 }]);
  });
  it('an image smaller than every resolution keeps its own size, rounded down, once', () => {
    expect(bucketsFor({ width: 600, height: 400 }, [768, 1024], 16)).toEqual([{ width: 592, height: 400 }]);
  });
  it('lists a bucket once when two resolutions round to it', () => {
    expect(bucketsFor({ width: 1000, height: 1000 }, [512, 520], 64)).toEqual([{ width: 512, height: 512 }]);
  });
});

describe('centreCrop', () => {
  it('cuts what sticks out evenly from both ends of the longer side', () => {
    // 1600x900 -> 1360x768: scale 768/900, the width needs 1594 of 1600 source columns.
    expect(centreCrop({ width: 1600, height: 900 }, { width: 1360, height: 768 })).toEqual({ left: 3, top: 0, width: 1594, height: 900 });
    expect(centreCrop({ width: 300, height: 1000 }, { width: 256, height: 512 })).toEqual({ left: 0, top: 200, width: 300, height: 600 });
  });
  it('takes the whole image when the aspect ratios match', () => {
    expect(centreCrop({ width: 900, height: 900 }, { width: 768, height: 768 })).toEqual({ left: 0, top: 0, width: 900, height: 900 });
  });
});
