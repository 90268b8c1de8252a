// A small terminal screen for tests: it applies what graft writes (text, newlines, cursor positioning,
// erase line / below / screen, colours ignored) to a grid of rows, so a test reads the screen a user would
// see, whatever mix of full frames and changed rows produced it.
export class VirtualScreen {
  private grid: string[][];
  private row = 0;
  private col = 0;

  constructor(readonly columns: number, readonly rows: number) {
    this.grid = Array.from({ length: rows }, () => new Array<string>(columns).fill(' '));
  }

  private eraseRow(r: number, from = 0): void {
    for (let c = from; c < this.columns; c++) this.grid[r]![c] = ' ';
  }

  write(data: string): void {
    let i = 0;
    while (i < data.length) {
      const ch = data[i]!;
      if (ch === '\u001B') {
        const m = /^\u001B\[([?0-9;]*)([A-Za-z])/.exec(data.slice(i));
        if (!m) { i++; continue; }
        this.control(m[1]!, m[2]!);
        i += m[0].length;
        continue;
      }
      if (ch === '\n') { this.newline(); i++; continue; }
      if (ch === '\r') { this.col = 0; i++; continue; }
      const cp = data.codePointAt(i)!;
      const s = String.fromCodePoint(cp);
      // A character past the last column wraps to the next row, as a terminal's auto-wrap does: a row
      // wider than the terminal takes two, and pushes the frame up.
      if (this.col >= this.columns) this.newline();
      this.grid[this.row]![this.col] = s;
      this.col++;
      i += s.length;
    }
  }

  /** Next row; at the bottom row the screen scrolls up, so a frame taller than the terminal loses its top. */
  private newline(): void {
    if (this.row === this.rows - 1) { this.grid.shift(); this.grid.push(new Array<string>(this.columns).fill(' ')); } else this.row++;
    this.col = 0;
  }

  private control(params: string, final: string): void {
    const n = params.split(';').map((p) => Number(p.replace('?', '')) || 0);
    switch (final) {
      case 'H': this.row = Math.max(0, (n[0] || 1) - 1); this.col = Math.max(0, (n[1] || 1) - 1); break;
      case 'G': this.col = Math.max(0, (n[0] || 1) - 1); break;
      case 'A': this.row = Math.max(0, this.row - (n[0] || 1)); break;
      case 'K':
        if (n[0] === 2) this.eraseRow(this.row);
        else if (n[0] === 0) this.eraseRow(this.row, this.col);
        break;
      case 'J':
        if (n[0] === 2 || n[0] === 3) for (let r = 0; r < this.rows; r++) this.eraseRow(r);
        else { this.eraseRow(this.row, this.col); for (let r = this.row + 1; r < this.rows; r++) this.eraseRow(r); }
        break;
      default: break; // colours, modes
    }
  }

  text(): string {
    return this.grid.map((r) => r.join('').trimEnd()).join('\n');
  }
}
