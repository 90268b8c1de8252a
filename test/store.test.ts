import { rmSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { graftHome } from '../src/paths.js';
import { Store, StoreError } from '../src/queue/store.js';
import { tempDir } from './helpers/dataset.js';

let home: string;
let store: Store;
beforeEach(() => { home = tempDir('graft-store-'); store = new Store(home); });
afterEach(() => { store.close(); rmSync(home, { recursive: true, force: true }); });

describe('Store', () => {
  it('uses WAL and a versioned schema', () => {
    expect(store.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(store.db.pragma('user_version', { simple: true })).toBe(2);
    // Reopening migrates nothing twice.
    store.close();
    store = new Store(home);
    expect(store.db.pragma('user_version', { simple: true })).toBe(2);
  });

  it('registers drafts with a position per GPU and updates them on save', () => {
    const a = store.saveDraft('a', '/j/a/config.yaml', 0);
    const b = store.saveDraft('b', '/j/b/config.yaml', 0);
    const c = store.saveDraft('c', '/j/c/config.yaml', 1);
    expect([a.position, b.position, c.position]).toEqual([0, 1, 0]);
    expect(a).toMatchObject({ state: 'draft', gpu: 0, name: 'a' });
    const a2 = store.saveDraft('a2', '/j/a/config.yaml', 0);
    expect(a2.id).toBe(a.id);
    expect(a2.name).toBe('a2');
    expect(store.listJobs().map((j) => j.name)).toEqual(['a2', 'b', 'c']);
  });

  it('refuses to overwrite a job that left the draft state', () => {
    const a = store.saveDraft('a', '/j/a/config.yaml', 0);
    store.db.prepare("UPDATE jobs SET state = 'running' WHERE id = ?").run(a.id);
    expect(() => store.saveDraft('a', '/j/a/config.yaml', 0)).toThrow(StoreError);
    expect(() => store.db.prepare("UPDATE jobs SET state = 'exploded' WHERE id = ?").run(a.id)).toThrow(/CHECK constraint/);
  });

  it('keeps named datasets with a regularization mark; forgetting one touches no files', () => {
    store.addDataset('shapes', '/data/shapes');
    store.addDataset('reg people', '/data/people', true);
    expect(() => store.addDataset('shapes', '/elsewhere')).toThrow('a dataset named "shapes" already exists');
    expect(() => store.addDataset('../x', '/x')).toThrow(/dataset name/);
    store.setDatasetReg('shapes', true);
    expect(store.listDatasets().map((d) => [d.name, d.folder, d.is_reg])).toEqual([['reg people', '/data/people', true], ['shapes', '/data/shapes', true]]);
    store.removeDataset('shapes');
    expect(store.listDatasets().map((d) => d.name)).toEqual(['reg people']);
  });
});

describe('graftHome', () => {
  it('is GRAFT_HOME when set, else ~/.graft', () => {
    expect(graftHome({ GRAFT_HOME: '/tmp/somewhere' })).toBe('/tmp/somewhere');
    expect(graftHome({ HOME: '/home/u' }).endsWith('/.graft')).toBe(true);
  });
});
