// Aspect-ratio buckets (SPEC.md section 6): downscale only, sides rounded down to the model's divisibility.

export interface Size {
  width: number;
  height: number;
}

function fit(width: number, height: number, resolution: number, divisibility: number): Size {
  const scale = Math.min(1, Math.sqrt((resolution * resolution) / (width * height)));
  return {
    width: Math.max(divisibility, Math.floor((width * scale) / divisibility) * divisibility),
    height: Math.max(divisibility, Math.floor((height * scale) / divisibility) * divisibility),
  };
}

/**
 * The bucket an image of width x height trains in: the largest listed resolution whose area does not exceed
 * the image's (never upscale: 900x900 with 768 and 1024 -> 768x768; 1200x1200 -> 1024x1024). An image smaller
 * than every resolution keeps its own size, rounded down. The centre crop takes what rounding leaves over.
 */
export function bucketFor(image: Size, resolutions: readonly number[], divisibility: number): Size {
  const area = image.width * image.height;
  const fitting = [...resolutions].sort((a, b) => b - a).find((r) => r * r <= area);
  if (fitting === undefined) return fit(image.width, image.height, Math.sqrt(area), divisibility);
  return fit(image.width, image.height, fitting, divisibility);
}

export interface BucketCount {
  bucket: string;
  width: number;
  height: number;
  count: number;
}

/**
 * How many images train in each bucket, largest bucket area first. An image counts in every bucket it
 * trains at (bucketsFor: one per listed resolution it reaches), as preparation makes one item per bucket.
 */
export function bucketHistogram(images: readonly Size[], resolutions: readonly number[], divisibility: number): BucketCount[] {
  const counts = new Map<string, BucketCount>();
  for (const img of images) {
    for (const b of bucketsFor(img, resolutions, divisibility)) {
      const key = `${b.width}x${b.height}`;
      const entry = counts.get(key) ?? { bucket: key, width: b.width, height: b.height, count: 0 };
      entry.count++;
      counts.set(key, entry);
    }
  }
  return [...counts.values()].sort((a, b) => b.width * b.height - a.width * a.height || b.width - a.width);
}

/**
 * Every bucket an image trains in when a dataset lists several resolutions: one per listed resolution the
 * image can be downscaled to (900x900 with 512, 768, 1024 -> 512x512 and 768x768, never upscaled to 1024),
 * or its own size rounded down when it is smaller than all of them. Equal buckets are listed once.
 */
export function bucketsFor(image: Size, resolutions: readonly number[], divisibility: number): Size[] {
  const area = image.width * image.height;
  const fitting = [...new Set(resolutions)].sort((a, b) => a - b).filter((r) => r * r <= area);
  const buckets = fitting.length > 0
    ? fitting.map((r) => fit(image.width, image.height, r, divisibility))
    : [bucketFor(image, resolutions, divisibility)];
  return buckets.filter((b, i) => buckets.findIndex((o) => o.width === b.width && o.height === b.height) === i);
}

export interface Crop {
  left: number;
  top: number;
  width: number;
  height: number;
}

/**
 * The centred region of the image that, scaled to the bucket, covers it exactly: the image is scaled so that
 * both sides reach the bucket, and what sticks out on the longer side is cut evenly from both ends.
 */
export function centreCrop(image: Size, bucket: Size): Crop {
  const scale = Math.max(bucket.width / image.width, bucket.height / image.height);
  const width = Math.min(image.width, Math.round(bucket.width / scale));
  const height = Math.min(image.height, Math.round(bucket.height / scale));
  return { left: Math.floor((image.width - width) / 2), top: Math.floor((image.height - height) / 2), width, height };
}
