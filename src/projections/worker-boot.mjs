// The read side worker thread's first module (remote.ts starts it). Plain JavaScript: on Node 20 a
// worker's entry is loaded before `--import tsx` takes effect in it, so the TypeScript entry is
// imported from here once tsx's loader is registered in this thread.
import { workerData } from 'node:worker_threads';

if (workerData.tsx) {
  const { register } = await import('tsx/esm/api');
  register();
}
await import(workerData.entry);
