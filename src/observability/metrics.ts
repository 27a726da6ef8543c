import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { LeanCounter, LeanHistogram, type CounterSeries, type HistogramSeries } from './lean.js';

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * Strand's Prometheus metrics, in a registry of its own (so tests and several instances in
 * one process do not collide). Labelled children are cached: the command path observes
 * several metrics per command and prom-client hashes label sets on every call otherwise.
 */
export class StrandMetrics {
  readonly registry = new Registry();
  // The four metrics every command touches are lean (see lean.ts); the rest are prom-client's own.
  readonly commands = new LeanCounter('strand_commands_total', 'Commands handled, by aggregate, command and result (ok, duplicate, or an error code)', ['aggregate', 'command', 'result'], this.registry);
  readonly commandDuration = new LeanHistogram('strand_command_duration_seconds', 'Time from a command taken off NATS to its reply', ['aggregate', 'command'], LATENCY_BUCKETS, this.registry);
  readonly eventsAppended = new LeanCounter('strand_events_appended_total', 'Events appended to the stream, by aggregate', ['aggregate'], this.registry);
  readonly appendDuration = new LeanHistogram('strand_append_duration_seconds', 'Time of one append (publish to ack), by aggregate', ['aggregate'], LATENCY_BUCKETS, this.registry);
  /** Commands taken and not yet replied to; read at scrape time. */
  commandsInFlight = 0;
  readonly conflicts = new Counter({ name: 'strand_concurrency_conflicts_total', help: 'Appends refused because another writer appended first', labelNames: ['aggregate'], registers: [this.registry] });
  readonly staleDecisions = new Counter({
    name: 'strand_stale_decisions_total',
    help: 'Rejections, no-ops and wrong-version answers decided again because the actor was behind the stream (another writer appended), by aggregate',
    labelNames: ['aggregate'],
    registers: [this.registry],
  });
  readonly liveActors = new Gauge({ name: 'strand_live_actors', help: 'Actors in memory', registers: [this.registry] });
  readonly actorBytes = new Gauge({ name: 'strand_actor_memory_bytes', help: "Estimated bytes of the actors' states and remembered command IDs (the budget STRAND_ACTOR_MEMORY_MB bounds)", registers: [this.registry] });
  readonly activations = new Counter({ name: 'strand_actor_activations_total', help: 'Actors activated, by aggregate and source (empty, events, snapshot)', labelNames: ['aggregate', 'source'], registers: [this.registry] });
  readonly passivations = new Counter({ name: 'strand_actor_passivations_total', help: 'Actors passivated, by aggregate and reason (idle, capacity, manual; failure: state dropped for a reload)', labelNames: ['aggregate', 'reason'], registers: [this.registry] });
  readonly rehydration = new Histogram({ name: 'strand_rehydration_duration_seconds', help: 'Time to activate an actor (snapshot plus events)', labelNames: ['aggregate'], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly snapshots = new Counter({ name: 'strand_snapshots_written_total', help: 'Snapshots written, by aggregate', labelNames: ['aggregate'], registers: [this.registry] });
  readonly inFlight: Gauge = new Gauge({
    name: 'strand_commands_in_flight',
    help: 'Commands taken and not yet replied to',
    registers: [this.registry],
    collect: (): void => this.inFlight.set(this.commandsInFlight),
  });

  readonly projectionApplied = new Counter({ name: 'strand_projection_events_applied_total', help: 'Events applied to PostgreSQL, by projection', labelNames: ['projection'], registers: [this.registry] });
  readonly projectionBatch = new Histogram({ name: 'strand_projection_batch_duration_seconds', help: 'Time to apply one batch and its checkpoint in one transaction, by projection', labelNames: ['projection'], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly projectionPending = new Gauge({ name: 'strand_projection_pending_events', help: 'Events in the stream the projection has not applied yet', labelNames: ['projection'], registers: [this.registry] });
  readonly projectionLag = new Gauge({ name: 'strand_projection_lag_seconds', help: 'Seconds between now and the last applied event while events are pending (0 when caught up)', labelNames: ['projection'], registers: [this.registry] });
  readonly projectionCheckpoint = new Gauge({ name: 'strand_projection_checkpoint', help: 'Stream sequence of the last event the projection applied', labelNames: ['projection', 'generation'], registers: [this.registry] });
  readonly deadLetters = new Counter({ name: 'strand_projection_dead_letters_total', help: 'Events parked after their handler kept failing, by projection', labelNames: ['projection'], registers: [this.registry] });
  readonly rebuildProgress = new Gauge({ name: 'strand_projection_rebuild_progress', help: 'Fraction (0..1) of the stream a rebuilding projection has applied', labelNames: ['projection', 'generation'], registers: [this.registry] });

  readonly processInstances = new Counter({ name: 'strand_process_instances_total', help: 'Process instances by what happened to them here (started, completed, failed), by process', labelNames: ['process', 'outcome'], registers: [this.registry] });
  readonly processSteps = new Counter({ name: 'strand_process_steps_total', help: 'Inputs a process recorded a step for, by process and input kind (event, reply, deadline)', labelNames: ['process', 'kind'], registers: [this.registry] });
  readonly processCommands = new Counter({ name: 'strand_process_commands_total', help: 'Commands processes sent (re-sends after a redelivery included), by process and reply (accepted, rejected, failed)', labelNames: ['process', 'reply'], registers: [this.registry] });
  readonly processDeadlines = new Counter({ name: 'strand_process_deadlines_total', help: 'Deadlines of processes, by process and action (set, cancelled, fired, stale: fired but no longer wanted)', labelNames: ['process', 'action'], registers: [this.registry] });
  readonly processLag = new Histogram({ name: 'strand_process_handling_lag_seconds', help: "Seconds from an input event's time to its step being recorded and its effects sent, by process", labelNames: ['process'], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly processParked = new Counter({ name: 'strand_process_inputs_parked_total', help: 'Inputs parked after they kept failing (a handler throwing, invalid data), by process', labelNames: ['process'], registers: [this.registry] });

  readonly clusterOwned = new Gauge({ name: 'strand_cluster_partitions_owned', help: 'Partitions whose commands this instance runs', registers: [this.registry] });
  readonly clusterMembers = new Gauge({ name: 'strand_cluster_members', help: 'Live instances this instance sees (itself included)', registers: [this.registry] });
  readonly clusterHeartbeats = new Counter({ name: 'strand_cluster_heartbeats_total', help: "This instance's membership heartbeats (its lease renewals), by result (ok, failed)", labelNames: ['result'], registers: [this.registry] });
  readonly clusterLost = new Counter({ name: 'strand_cluster_partitions_lost_total', help: 'Partitions this instance found owned by another while it believed it owned them (paused, or cut off past its membership)', registers: [this.registry] });
  readonly clusterHandoffs = new Counter({ name: 'strand_cluster_handoffs_total', help: 'Partitions that changed hands here, by kind (out: handed over, in: received with a handoff, takeover: taken from an owner that was gone)', labelNames: ['kind'], registers: [this.registry] });
  readonly clusterForwarded = new Counter({ name: 'strand_cluster_commands_forwarded_total', help: 'Commands this instance forwarded to the owner of their partition', registers: [this.registry] });
  readonly durableCommands = new Counter({
    name: 'strand_durable_commands_total',
    help: 'Durable commands (cmdq.>) settled here, by result (ok, duplicate, an error code recorded as the outcome, or retried: UNAVAILABLE, delivered again)',
    labelNames: ['result'],
    registers: [this.registry],
  });
  readonly deadlines = new Counter({
    name: 'strand_deadlines_total',
    help: 'Deadlines by owner and action (set, cancelled, fired: handed to a handler the first time, redelivered, handled, failed: the handler threw)',
    labelNames: ['owner', 'action'],
    registers: [this.registry],
  });
  readonly deadlineLateness = new Histogram({
    name: 'strand_deadline_lateness_seconds',
    help: "Seconds from a deadline's due time to its first delivery to a handler, by owner",
    labelNames: ['owner'],
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });
  readonly clusterWaiting = new Gauge({ name: 'strand_cluster_commands_waiting', help: 'Commands held here while their partition has no owner or changes hands', registers: [this.registry] });

  readonly liveConnections = new Gauge({ name: 'strand_live_connections', help: 'Open WebSocket connections', registers: [this.registry] });
  readonly liveSubscriptions = new Gauge({ name: 'strand_live_subscriptions', help: 'Active WebSocket subscriptions', registers: [this.registry] });
  readonly liveMessages = new LeanCounter('strand_live_messages_sent_total', 'Messages sent to WebSocket clients', [], this.registry).labels();
  readonly liveCoalesced = new Counter({ name: 'strand_live_updates_coalesced_total', help: 'Row updates replaced by a newer one while a slow client was behind', registers: [this.registry] });
  readonly liveDropped = new Counter({ name: 'strand_live_updates_dropped_total', help: 'Held-back updates discarded when a too-slow client was closed', registers: [this.registry] });
  readonly livePushLatency = new LeanHistogram('strand_live_push_latency_seconds', 'Time from an event being decided to its change being sent to a client', [], LATENCY_BUCKETS, this.registry).labels();

  private readonly byCommand = new Map<string, { results: Map<string, CounterSeries>; duration: HistogramSeries }>();
  private readonly byAggregate = new Map<string, { appended: CounterSeries; duration: HistogramSeries }>();

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'strand_' });
  }

  /** Counts one command outcome and its duration. */
  command(aggregate: string, command: string, result: string, seconds: number): void {
    const key = `${aggregate}\0${command}`;
    let c = this.byCommand.get(key);
    if (!c) this.byCommand.set(key, (c = { results: new Map(), duration: this.commandDuration.labels(aggregate, command) }));
    let r = c.results.get(result);
    if (!r) c.results.set(result, (r = this.commands.labels(aggregate, command, result)));
    r.inc();
    c.duration.observe(seconds);
  }

  appended(aggregate: string, events: number, seconds: number): void {
    let a = this.byAggregate.get(aggregate);
    if (!a) this.byAggregate.set(aggregate, (a = { appended: this.eventsAppended.labels(aggregate), duration: this.appendDuration.labels(aggregate) }));
    a.appended.inc(events);
    a.duration.observe(seconds);
  }
}
