/**
 * A 3-node NATS cluster on loopback for integration tests (src/nats/cluster.ts): routed
 * nats-servers with their own temporary stores, removed at cleanup.
 */
import { startNatsCluster, type NatsCluster } from '../../src/nats/cluster.js';
import { makeTempDir } from './nats.js';

export type TestCluster = NatsCluster & {
  /** Stops every node and removes their stores. */
  cleanup(): Promise<void>;
};

export async function startTestCluster(opts: { sync?: 'always' | 'default'; nodes?: number } = {}): Promise<TestCluster> {
  const tmp = await makeTempDir('strand-cluster-');
  let cluster: NatsCluster;
  try {
    cluster = await startNatsCluster({ dir: tmp.dir, sync: opts.sync ?? 'default', ...(opts.nodes ? { nodes: opts.nodes } : {}) });
  } catch (err) {
    await tmp.cleanup();
    throw err;
  }
  return Object.assign(cluster, {
    async cleanup() {
      await cluster.stop();
      await tmp.cleanup();
    },
  });
}

/** Configuration of a Strand instance on the cluster: its streams and buckets at R3. */
export const R3 = { STRAND_STREAM_REPLICAS: '3' } as const;
