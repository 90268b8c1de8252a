// State of the Datasets screen: named datasets from the store and their scans. No rendering here.
import { useCallback, useEffect, useRef, useState } from 'react';
import { scanDataset, ScanError, type ScanProgress, type ScanResult } from '../datasets/scan.js';
import type { DatasetRow, Store } from '../queue/store.js';

export type ScanState =
  | { status: 'scanning'; progress: ScanProgress }
  | { status: 'done'; result: ScanResult }
  | { status: 'error'; message: string };

export function useDatasets(store: Store) {
  const [list, setList] = useState<DatasetRow[]>(() => store.listDatasets());
  const [scans, setScans] = useState<Record<string, ScanState>>({});
  const running = useRef(new Map<string, AbortController>());

  const refresh = useCallback(() => setList(store.listDatasets()), [store]);

  const scan = useCallback((name: string, folder: string) => {
    running.current.get(name)?.abort();
    const ctl = new AbortController();
    running.current.set(name, ctl);
    setScans((s) => ({ ...s, [name]: { status: 'scanning', progress: { done: 0, total: 0 } } }));
    scanDataset(folder, {
      signal: ctl.signal,
      onProgress: (progress) => { if (!ctl.signal.aborted) setScans((s) => ({ ...s, [name]: { status: 'scanning', progress } })); },
    }).then(
      (result) => { if (!ctl.signal.aborted) setScans((s) => ({ ...s, [name]: { status: 'done', result } })); },
      (err: unknown) => {
        if (ctl.signal.aborted) return;
        setScans((s) => ({ ...s, [name]: { status: 'error', message: err instanceof ScanError ? err.message : String((err as Error).message) } }));
      },
    ).finally(() => { if (running.current.get(name) === ctl) running.current.delete(name); });
  }, []);

  useEffect(() => () => { for (const c of running.current.values()) c.abort(); }, []);

  return {
    list,
    scans,
    scan,
    refresh,
    add(name: string, folder: string) {
      store.addDataset(name, folder);
      refresh();
      scan(name.trim(), folder);
    },
    toggleReg(name: string) {
      const row = list.find((d) => d.name === name);
      if (!row) return;
      store.setDatasetReg(name, !row.is_reg);
      refresh();
    },
    remove(name: string) {
      running.current.get(name)?.abort();
      store.removeDataset(name);
      setScans((s) => { const { [name]: _, ...rest } = s; return rest; });
      refresh();
    },
  };
}

export type DatasetsState = ReturnType<typeof useDatasets>;
