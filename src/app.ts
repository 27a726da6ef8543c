import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { clusterBucketName } from '../subjects/index.js';
import type { NatsConnection } from '@nats-io/nats-core';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { ActorSystem } from './actor/system.js';
import type { Aggregate } from './aggregate/define.js';
import { CommandIntake } from './commands/intake.js';
import { ClusterView } from './cluster/view.js';
import { Region } from './cluster/region.js';
import { DurableIntake, ensureCommandStream } from './cluster/durable-intake.js';
import { OutcomeStore } from './cluster/outcomes.js';
import type { Config } from './config.js';
import { JetStreamEventStore, ensureEventStream } from './eventstore/jetstream.js';
import { KvSnapshotStore } from './eventstore/snapshots.js';
import { buildHttpServer } from './http/server.js';
import { createPool } from './postgres/connect.js';
import { ReadSide, readSideOptions, type ReadSideApi } from './projections/host.js';
import { RemoteReadSide, type ProjectionsModule } from './projections/remote.js';
import { AggregatorRegistry } from 'prom-client';
import type { MetricsSource } from './http/metrics.js';
import type { Projection } from './projections/types.js';
import { ViewReader } from './projections/views.js';
import { allowAll, decideCheck, type AccessPolicy } from './auth/access.js';
import { createAuthenticator, type Authenticator } from './auth/tokens.js';
import { LiveGateway } from './live/gateway.js';
import type { Pool } from 'pg';
import { connectNats, isTransientJetStream, natsServers, untilReady } from './nats/connect.js';
import { requireServerVersion } from './nats/version.js';
import { isTransient as isTransientPg } from './projections/runner.js';
import { StrandMetrics } from './observability/metrics.js';
import type { Process } from './processes/define.js';
import { Deadlines } from './processes/deadlines.js';
import { ParkedInputs } from './processes/parked.js';
import { ProcessRuntime } from './processes/runtime.js';
import { failpointWait } from './failpoints.js';
import { AggregateDeadlines, type AggregateDeadlineRule } from './processes/aggregate-deadlines.js';

/** `/metrics` with the read side worker's metrics joined to this thread's (each series lives on one side). */
function joinedMetrics(metrics: StrandMetrics, remote: RemoteReadSide): MetricsSource {
  return {
    contentType: metrics.registry.contentType,
    metrics: async () => {
      const mine = await metrics.registry.getMetricsAsJSON();
      const theirs = await remote.metrics().catch(() => []);
      return AggregatorRegistry.aggregate([mine, theirs]).metrics();
    },
  } as MetricsSource;
}

/** Everything a running Strand needs from outside. */
export interface StrandDeps {
  readonly config: Config;
  readonly aggregates: readonly Aggregate[];
  /** One NATS server URL, or several separated by commas (a cluster: any of them will do). */
  readonly natsUrl: string;
  /** PostgreSQL for the read side; without it no projection runs and no view is served. */
  readonly databaseUrl?: string;
  readonly projections?: readonly Projection[];
  /**
   * The module that exports `projections` (the same array), so the read side can run on a worker
   * thread (STRAND_READ_SIDE_THREAD), which imports it itself. Without it the read side runs on
   * this thread.
   */
  readonly projectionsModule?: ProjectionsModule;
  /** Process managers (docs/processes.md); run by instances with the `processes` role. */
  readonly processes?: readonly Process[];
  /** Who may read, send and operate what, over HTTP and WebSocket (default: `allowAll`). */
  readonly access?: AccessPolicy;
  /** How HTTP and WebSocket clients authenticate (default: from the configuration). */
  readonly auth?: Authenticator;
  readonly log: Logger;
  /** Register Node's default process metrics (off in tests that start several instances). */
  readonly defaultMetrics?: boolean;
  /** Aborted when the process is asked to stop while start still waits for NATS or PostgreSQL. */
  readonly signal?: AbortSignal;
  /** Deadlines aggregates keep (e.g. the task's `overdue`), run with STRAND_DEADLINES on by instances that take commands. */
  readonly deadlineRules?: readonly AggregateDeadlineRule[];
}

/**
 * One Strand instance: actors taking commands from NATS, the event store, the HTTP server.
 * Several may run against one NATS; they share the command queue group.
 */
export class Strand {
  private stopping = false;
  private connected = true;

  private constructor(
    readonly nc: NatsConnection,
    readonly store: JetStreamEventStore,
    readonly actors: ActorSystem,
    /** Routes commands to the owners of their partitions; undefined without the `commands` role. */
    readonly region: Region | undefined,
    /** Membership and partition claims. */
    readonly cluster: ClusterView,
    readonly intake: CommandIntake,
    readonly http: FastifyInstance,
    readonly metrics: StrandMetrics,
    private readonly log: Logger,
    private readonly config: Config,
    readonly pool: Pool | undefined,
    readonly readSide: ReadSideApi | undefined,
    readonly views: ViewReader | undefined,
    readonly live: LiveGateway | undefined,
    /** Durable commands' outcomes; undefined when STRAND_DURABLE_INTAKE is off. */
    readonly outcomes: OutcomeStore | undefined,
    private readonly durable: DurableIntake | undefined,
    /** The process managers' runtime; undefined without processes or without the `processes` role. */
    readonly processRuntime: ProcessRuntime | undefined,
    /** The deadline store (`<STREAM>_DEADLINES`); undefined when STRAND_DEADLINES is off and no process is defined. */
    readonly deadlines: Deadlines | undefined,
    private readonly aggregateDeadlines: AggregateDeadlines | undefined,
  ) {}

  /** Connects, checks the server, prepares the stream and starts taking commands. */
  static async start(deps: StrandDeps): Promise<Strand> {
    const { config, log } = deps;
    const wait = { log, signal: deps.signal };
    const credentials = config.NATS_USER !== undefined && config.NATS_PASSWORD !== undefined ? { user: config.NATS_USER, pass: config.NATS_PASSWORD } : undefined;
    const nc = await connectNats(natsServers(deps.natsUrl), 'strand', wait, credentials);
    try {
      requireServerVersion(nc.info?.version, deps.natsUrl);
      const stream = { name: config.STRAND_STREAM, replicas: config.STRAND_STREAM_REPLICAS, duplicateWindowMs: config.STRAND_DUPLICATE_WINDOW_MS };
      // On a cluster that is restarting, JetStream answers only once its leaders are elected.
      await untilReady('event stream', () => ensureEventStream(nc, stream, log), isTransientJetStream, wait);
      const store = new JetStreamEventStore(nc, { ...stream, timeoutMs: config.STRAND_STORE_TIMEOUT_MS });
      const snapshots = config.STRAND_SNAPSHOT_EVERY > 0 || deps.aggregates.some((a) => (a.snapshotEvery ?? 0) > 0)
        ? await untilReady('snapshot bucket', () => KvSnapshotStore.open(nc, config.STRAND_STREAM, config.STRAND_STREAM_REPLICAS), isTransientJetStream, wait)
        : undefined;
      const metrics = new StrandMetrics({ defaultMetrics: deps.defaultMetrics ?? true });
      const actors = new ActorSystem(
        store,
        snapshots,
        {
          maxActors: config.STRAND_MAX_ACTORS,
          memoryBytes: config.STRAND_ACTOR_MEMORY_MB * 1024 * 1024,
          idleMs: config.STRAND_ACTOR_IDLE_MS,
          conflictRetries: config.STRAND_CONFLICT_RETRIES,
          mailboxLimit: config.STRAND_MAILBOX_LIMIT,
          snapshotEvery: config.STRAND_SNAPSHOT_EVERY,
          validateEvents: config.STRAND_VALIDATE_EVENTS,
        },
        metrics,
        log.child({ component: 'actors' }),
      );
      const processes = deps.processes ?? [];
      for (const p of processes) {
        if (deps.aggregates.some((a) => a.name === p.name)) throw new Error(`process ${p.name} has the name of an aggregate`);
        for (const src of p.sources.keys()) if (!deps.aggregates.some((a) => a.name === src)) throw new Error(`process ${p.name} reacts to ${src}, which is not a defined aggregate`);
      }
      if (new Set(processes.map((p) => p.name)).size !== processes.length) throw new Error('a process is defined twice');
      const processLog = log.child({ component: 'processes' });
      // One deadline store for aggregates' rules (STRAND_DEADLINES) and process managers (whenever one is defined).
      const deadlines = config.STRAND_DEADLINES || processes.length > 0
        ? await untilReady('deadline stream', () => Deadlines.open(nc, { stream: config.STRAND_STREAM, replicas: config.STRAND_STREAM_REPLICAS, metrics }, log), isTransientJetStream, wait)
        : undefined;
      const parked = processes.length > 0 ? await untilReady('parked process inputs bucket', () => ParkedInputs.open(nc, config.STRAND_STREAM, config.STRAND_STREAM_REPLICAS), isTransientJetStream, wait) : undefined;
      const processRuntime = deadlines && parked && config.STRAND_ROLES.includes('processes')
        ? new ProcessRuntime(
            nc,
            processes,
            actors,
            store,
            deadlines,
            parked,
            {
              stream: config.STRAND_STREAM,
              maxAttempts: config.STRAND_PROCESS_MAX_ATTEMPTS,
              ackWaitMs: config.STRAND_PROCESS_ACK_WAIT_MS,
              maxPending: config.STRAND_PROCESS_MAX_PENDING,
              commandTimeoutMs: config.STRAND_PROCESS_COMMAND_TIMEOUT_MS,
              pinTtlMs: config.STRAND_PROCESS_PIN_TTL_MS,
            },
            metrics,
            processLog,
          )
        : undefined;
      const access = deps.access ?? allowAll;
      const intake = new CommandIntake(deps.aggregates, { maxBodyBytes: config.STRAND_MAX_COMMAND_BYTES, decideCheck: (principal, command) => decideCheck(access, principal, command) });
      // Before joining the cluster, so a member is soon ready. The others hand it partitions only once
      // its region has subscribed and announced `accepting` (Region.start), however late that is.
      let outcomes: OutcomeStore | undefined;
      if (config.STRAND_DURABLE_INTAKE) {
        const intakeLog = log.child({ component: 'durable-intake' });
        // Created by every instance, so commands can be published durably before any instance takes them.
        await untilReady('durable command stream', () => ensureCommandStream(nc, { ...stream, partitions: config.STRAND_PARTITIONS }, intakeLog), isTransientJetStream, wait);
        outcomes = await untilReady('outcome bucket', () => OutcomeStore.open(nc, { stream: config.STRAND_STREAM, replicas: config.STRAND_STREAM_REPLICAS, ttlMs: config.STRAND_OUTCOME_TTL_MS }, intakeLog), isTransientJetStream, wait);
      }
      /** Names this instance in the cluster, and in what it publishes for other instances (the live feed). */
      const instance = randomUUID();
      const cluster = await untilReady(
        'cluster bucket',
        () =>
          ClusterView.open(
            nc,
            { bucket: clusterBucketName(config.STRAND_STREAM), replicas: config.STRAND_STREAM_REPLICAS, heartbeatMs: config.STRAND_HEARTBEAT_MS, memberTtlMs: config.STRAND_MEMBER_TTL_MS },
            // Without a database an instance applies no projection: it must not be planned for one.
            { instance, roles: config.STRAND_ROLES.filter((r) => (r !== 'projections' || deps.databaseUrl !== undefined) && (r !== 'processes' || processes.length > 0)), startedAt: new Date().toISOString(), pid: process.pid, host: hostname(), projections: [], ready: false, accepting: false, leaving: false },
            log.child({ component: 'cluster' }),
            (ok) => metrics.clusterHeartbeats.labels(ok ? 'ok' : 'failed').inc(),
          ),
        isTransientJetStream,
        wait,
      );
      // A member from here on, not accepting partitions until its region has subscribed (tests widen this window).
      await failpointWait('cluster.joined');
      const region = config.STRAND_ROLES.includes('commands')
        ? new Region(
            nc,
            cluster,
            intake,
            actors,
            {
              partitions: config.STRAND_PARTITIONS,
              queueGroup: config.STRAND_QUEUE_GROUP,
              maxInFlight: config.STRAND_MAX_IN_FLIGHT,
              ownerWaitMs: config.STRAND_OWNER_WAIT_MS,
              handoffWaitMs: config.STRAND_HANDOFF_WAIT_MS,
              bufferLimit: config.STRAND_PARTITION_BUFFER,
              drainTimeoutMs: config.STRAND_DRAIN_TIMEOUT_MS,
            },
            metrics,
            log.child({ component: 'region' }),
          )
        : undefined;
      const durable = region && outcomes
        ? new DurableIntake(
            nc,
            region,
            intake,
            outcomes,
            { ...stream, partitions: config.STRAND_PARTITIONS, maxPending: config.STRAND_INTAKE_MAX_PENDING, ackWaitMs: config.STRAND_INTAKE_ACK_WAIT_MS, drainTimeoutMs: config.STRAND_DRAIN_TIMEOUT_MS },
            metrics,
            log.child({ component: 'durable-intake' }),
          )
        : undefined;
      if (region && durable) {
        region.addPartitionListener(durable);
        durable.start();
      }
      let pool: Pool | undefined;
      let readSide: ReadSideApi | undefined;
      let remote: RemoteReadSide | undefined;
      let views: ViewReader | undefined;
      if (deps.databaseUrl) {
        const projections = deps.projections ?? [];
        // Commands and projections in one process: the runners apply on a thread of their own, so
        // a batch being planned never holds up a command (and the read side can use another core).
        const threaded =
          config.STRAND_READ_SIDE_THREAD && deps.projectionsModule !== undefined && projections.length > 0 && config.STRAND_ROLES.includes('commands') && config.STRAND_ROLES.includes('projections');
        pool = createPool(deps.databaseUrl, { max: config.STRAND_PG_POOL_SIZE + (threaded ? 0 : projections.length * 2), applicationName: 'strand' });
        if (threaded) {
          remote = new RemoteReadSide(
            projections,
            {
              config,
              natsUrl: deps.natsUrl,
              databaseUrl: deps.databaseUrl,
              instance,
              module: deps.projectionsModule!,
              poolMax: 2 + projections.length * 2,
              logLevel: log.level,
            },
            log.child({ component: 'projections' }),
            cluster,
          );
          readSide = remote;
        } else readSide = new ReadSide(
          pool,
          nc,
          projections,
          readSideOptions(config, instance),
          metrics,
          log.child({ component: 'projections' }),
          cluster,
        );
        views = new ViewReader(pool, projections);
      }
      const auth = deps.auth ?? (await createAuthenticator(config));
      let app!: Strand;
      const http = buildHttpServer({
        log,
        auth,
        registry: remote ? joinedMetrics(metrics, remote) : metrics.registry,
        checks: [
          { name: 'nats', ready: () => app.connected },
          { name: 'commands', ready: () => !app.stopping },
          ...(region ? [{ name: 'partitions', ready: () => region.ready }] : []),
        ],
        reports: readSide ? [{ name: 'projectionsCaughtUp', value: () => readSide!.caughtUp() }] : [],
        api: {
          aggregates: intake.registry,
          processes: new Map(processes.map((p) => [p.name, p])),
          deadlines,
          parked,
          retryParked: processRuntime ? (process, key) => processRuntime.retryParked(process, key) : undefined,
          actors,
          store,
          intake,
          metrics,
          readSide,
          views,
          minSeqWaitMs: config.STRAND_MIN_SEQ_WAIT_MS,
          maxCommandBytes: config.STRAND_MAX_COMMAND_BYTES,
          submit: region ? (req, body) => region.submit(req, body) : undefined,
          cluster: region,
          acceptingCommands: () =>
            !config.STRAND_ROLES.includes('commands') ? 'this instance does not take commands (STRAND_ROLES)' : app.stopping ? 'this instance is shutting down' : true,
          stream: config.STRAND_STREAM,
          natsUrl: deps.natsUrl,
          access,
          outcomes,
        },
      });
      let live: LiveGateway | undefined;
      if (views) {
        live = new LiveGateway(
          { nc, views, readSide, actors, store, aggregates: new Map([...intake.registry, ...processes.map((p) => [p.name, p.aggregate] as const)]), auth, access, metrics, log: log.child({ component: 'live' }), instance },
          {
            stream: config.STRAND_STREAM,
            maxSubscriptions: config.STRAND_WS_MAX_SUBSCRIPTIONS,
            maxMessageBytes: config.STRAND_WS_MAX_MESSAGE_BYTES,
            rate: config.STRAND_WS_RATE,
            sendQueueBytes: config.STRAND_WS_SEND_QUEUE_BYTES,
            maxPending: config.STRAND_WS_MAX_PENDING,
            heartbeatMs: config.STRAND_WS_HEARTBEAT_MS,
            bufferPerView: config.STRAND_LIVE_BUFFER,
            minSeqWaitMs: config.STRAND_MIN_SEQ_WAIT_MS,
          },
        );
        live.start(http.server);
        const gateway = live;
        readSide?.onLiveFeed((m) => gateway.deliverLocal(m));
      }
      const aggregateDeadlines =
        // Opt-in (STRAND_DEADLINES): the store may be open only for the process managers.
        region && deadlines && config.STRAND_DEADLINES && (deps.deadlineRules ?? []).length > 0
          ? new AggregateDeadlines(
              nc,
              deadlines,
              deps.deadlineRules!,
              (aggregate, id, command, body, headers) => {
                const parsed = intake.parse(aggregate, id, command, body, headers);
                return 'ok' in parsed ? Promise.resolve(parsed) : region.submit(parsed, body);
              },
              { stream: config.STRAND_STREAM, ackWaitMs: 30_000 },
              log.child({ component: 'deadline-rules' }),
            )
          : undefined;
      app = new Strand(nc, store, actors, region, cluster, intake, http, metrics, log, config, pool, readSide, views, live, outcomes, durable, processRuntime, deadlines, aggregateDeadlines);
      app.watchConnection();
      if (readSide && config.STRAND_ROLES.includes('projections')) await untilReady('read model database', () => readSide.start(), isTransientPg, wait);
      outcomes?.serve(nc, config.STRAND_QUEUE_GROUP);
      if (region) await region.start();
      await processRuntime?.start();
      if (aggregateDeadlines) await untilReady('deadline rules', () => aggregateDeadlines.start(), isTransientJetStream, wait);
      log.info({ nats: deps.natsUrl, server: nc.info?.version, stream: config.STRAND_STREAM, roles: config.STRAND_ROLES, aggregates: deps.aggregates.map((a) => a.name) }, config.STRAND_ROLES.includes('commands') ? 'taking commands' : 'started without taking commands');
      return app;
    } catch (err) {
      await nc.close().catch(() => undefined);
      throw err;
    }
  }

  /** Drains: stop taking commands, finish those in progress, close. Resolves true when nothing was cut off. */
  async stop(): Promise<boolean> {
    if (this.stopping) return true;
    this.stopping = true;
    // Commands stop coming in on both doors; those in progress (NATS and HTTP) are finished.
    // WebSocket clients are told to go elsewhere (1001) and will resume there.
    await this.live?.stop();
    // Processes stop first: they send commands, which the rest must still take while they finish.
    await this.processRuntime?.stop();
    // Deadline commands in progress go through the region before it stops; fired deadlines not started go back to the stream.
    await this.aggregateDeadlines?.stop();
    await this.deadlines?.close();
    // Partitions go to the other instances (commands in progress finish first, those waiting go with them).
    const [clean] = await Promise.all([this.region ? this.region.stop() : this.cluster.leave().then(() => true), this.http.close()]);
    if (!clean) this.log.warn({ pending: this.region?.pending ?? 0 }, 'drain timed out with commands in progress');
    await this.durable?.stop();
    this.outcomes?.stop();
    await this.readSide?.stop();
    this.actors.stop();
    this.store.close();
    await this.pool?.end().catch(() => undefined);
    await this.nc.drain().catch(() => undefined);
    return clean;
  }

  private watchConnection(): void {
    void (async () => {
      for await (const s of this.nc.status()) {
        if (s.type === 'disconnect') {
          this.connected = false;
          this.log.warn({ server: s.server }, 'NATS disconnected');
        } else if (s.type === 'reconnect') {
          this.connected = true;
          this.log.info({ server: s.server }, 'NATS reconnected');
        }
      }
    })();
  }
}
