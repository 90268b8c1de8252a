// The one error preparation throws for bad input: a single line naming the file, field or value and what to do.
export class PrepareError extends Error {
  override name = 'PrepareError';
}
