// The part of blessed-contrib's braille canvas (a CommonJS module without types) that the loss chart uses.
declare module 'drawille-canvas-blessed-contrib' {
  export default class Context {
    /** Width and height in dots: 2 per character column, 4 per character row. */
    constructor(width: number, height: number);
    /** The colour of the dots set from now on (a name: cyan, yellow, red, ...). */
    strokeStyle: string;
    /** The dot canvas: set() lights one dot; frame() is the text, a colour code around each lit character. */
    readonly _canvas: { set(x: number, y: number): void; frame(delimiter?: string): string };
  }
}
