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

/** How many images land in each bucket, largest bucket area first. */
export function bucketHistogram(images: readonly Size[], resolutions: readonly number[], divisibility: number): BucketCount[] {
  const counts = new Map<string, BucketCount>();
  for (const img of images) {
    const b = bucketFor(img, resolutions, divisibility);
    const key = `${b.width}x${b.height}`;
    const entry = counts.get(key) ?? { bucket: key, width: b.width, height: b.height, count: 0 };
    entry.count++;
    counts.set(key, entry);
  }
  return [...counts.values()].sort((a, b) => b.width * b.height - a.width * a.height || b.width - a.width);
}
