/**
 * An instance joining: it is a member (its heartbeat in the cluster bucket) a while before its
 * region subscribes to the subjects forwarded commands and handoff notices come in on. Nothing
 * may be handed or forwarded to it in that window, however long it lasts: the failpoint
 * `cluster.joined` widens it to seconds while another instance takes commands under load.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Strand } from '../src/app.js';
import { armFailpoint } from '../src/failpoints.js';
import { R3, startTestCluster, type TestCluster } from './support/cluster.js';
import { Load, verifyLoad } from './support/load.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { eventually, startStrand } from './support/strand.js';

const WINDOW_MS = 4000;

async function joinDuringLoad(urls: string[], nc: NatsConnection, env: Record<string, string>, prefix: string): Promise<void> {
  const a = await startStrand(urls[0]!, env);
  const instances: Strand[] = [a];
  const load = new Load(urls.join(','), prefix, 6);
  try {
    await eventually(() => a.region!.ready, 'the first instance to hold every partition', 20_000);
    await load.start();
    await load.until(100);
    // The second instance joins the cluster, then waits WINDOW_MS before its region subscribes.
    armFailpoint(`cluster.joined:1:delay${WINDOW_MS}`);
    const joining = startStrand(urls[1 % urls.length]!, env);
    let b: Strand | undefined;
    const started = joining.then((s) => {
      b = s;
      instances.push(s);
    });
    await eventually(() => a.cluster.live('commands').length === 2, 'the second instance to be a member', 20_000);
    // Within the window: a member not subscribed yet owns nothing, and commands flow on.
    const atJoin = load.acknowledgedCount;
    const end = Date.now() + WINDOW_MS - 1000;
    while (Date.now() < end && b === undefined) {
      const others = a.region!.status().owners.filter((o) => o !== null && o !== a.region!.instance);
      expect(others, 'partitions handed to a member that does not take them yet').toEqual([]);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(b, 'the second instance started only after the window').toBeUndefined();
    expect(load.acknowledgedCount).toBeGreaterThan(atJoin);
    await started;
    await eventually(() => instances.every((s) => s.region!.ready), 'both instances to hold their share', 30_000);
    expect(b!.region!.status().local.active.length).toBeGreaterThan(0);
    await load.until(load.acknowledgedCount + 200);
  } finally {
    armFailpoint('');
    const result = await load.stop();
    await Promise.all(instances.map((s) => s.stop()));
    // Not one command failed, timed out, was lost or was repeated.
    expect([...result.failures], result.reasons.join('; ')).toEqual([]);
    await verifyLoad(nc, result);
  }
}

describe('an instance joining, on one server', { timeout: 120_000 }, () => {
  let nats: TestNats;
  let nc: NatsConnection;
  beforeAll(async () => {
    nats = await startTestNats();
    nc = await connect({ servers: nats.url });
  });
  afterAll(async () => {
    await nc?.close();
    await nats?.cleanup();
  });

  it('is handed no partition and forwarded no command before its region is subscribed', async () => {
    await joinDuringLoad([nats.url], nc, {}, 'join1');
  });
});

describe('an instance joining, on a 3-node cluster', { timeout: 180_000 }, () => {
  let cluster: TestCluster;
  let nc: NatsConnection;
  beforeAll(async () => {
    cluster = await startTestCluster();
    nc = await connect({ servers: cluster.urls.split(','), maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  });
  afterAll(async () => {
    await nc?.close();
    await cluster?.cleanup();
  });

  it('is handed no partition and forwarded no command before its region is subscribed', async () => {
    await joinDuringLoad(cluster.urls.split(','), nc, { ...R3 }, 'join3');
  });
});
