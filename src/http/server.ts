import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { ActorSystem } from '../actor/system.js';
import type { Aggregate } from '../aggregate/define.js';
import type { AccessPolicy } from '../auth/access.js';
import type { Authenticator } from '../auth/tokens.js';
import type { CommandIntake } from '../commands/intake.js';
import type { CommandReply, CommandRequest } from '../commands/types.js';
import type { OutcomeStore } from '../cluster/outcomes.js';
import type { RegionStatus } from '../cluster/region.js';
import type { EventStore } from '../eventstore/types.js';
import type { StrandMetrics } from '../observability/metrics.js';
import type { ReadSideApi } from '../projections/host.js';
import type { ViewReader } from '../projections/views.js';
import { aggregateRoutes } from './aggregates.js';
import { asyncApiRoute } from './asyncapi.js';
import { catalogRoute } from './catalog.js';
import { authentication } from './auth.js';
import { clusterRoute } from './cluster.js';
import { commandRoutes } from './commands.js';
import { clientErrorHandler, errorHandling, frameworkErrors } from './errors.js';
import { dashboardRoutes } from '../live/dashboard.js';
import { healthRoutes, type ReadinessCheck } from './health.js';
import { metricsRoute, type MetricsSource } from './metrics.js';
import { openApiRoute } from './openapi.js';
import { outcomeRoute } from './outcomes.js';
import { projectionRoutes } from './projections.js';
import { processRoutes } from './processes.js';
import type { Process } from '../processes/define.js';
import type { Deadlines } from '../processes/deadlines.js';
import type { ParkedInputs } from '../processes/parked.js';
import { viewRoutes } from './views.js';

/** What the API routes read from and act on. */
export interface ApiDeps {
  readonly aggregates: ReadonlyMap<string, Aggregate>;
  /** Process managers, by name: their instances are served by the aggregate routes too (never their commands). */
  readonly processes?: ReadonlyMap<string, Process>;
  /** Pending deadlines of process instances; absent when no process is defined. */
  readonly deadlines?: Deadlines | undefined;
  /** Parked process inputs; absent when no process is defined. */
  readonly parked?: ParkedInputs | undefined;
  /** Retries a parked process input; absent on an instance without the `processes` role. */
  readonly retryParked?: ((process: string, key: string) => Promise<{ found: boolean; ok: boolean; recorded?: boolean; error?: string }>) | undefined;
  readonly actors: ActorSystem;
  readonly store: EventStore;
  readonly intake: CommandIntake;
  readonly metrics: StrandMetrics;
  /** Absent when no database is configured: view and projection routes answer 503 UNAVAILABLE. */
  readonly readSide: ReadSideApi | undefined;
  readonly views: ViewReader | undefined;
  /** Longest a `minSeq` query waits for its projection. */
  readonly minSeqWaitMs: number;
  /** The configured largest command body (STRAND_MAX_COMMAND_BYTES). */
  readonly maxCommandBytes: number;
  /** Runs a command where its partition's owner is (here, or forwarded over NATS); absent without the commands role. */
  readonly submit?: ((req: CommandRequest, body: Uint8Array) => Promise<CommandReply>) | undefined;
  /** The cluster's routing, for `GET /cluster`. */
  readonly cluster?: { status(): RegionStatus } | undefined;
  /** true, or why new commands are refused with UNAVAILABLE (draining, or no commands role). */
  acceptingCommands(): true | string;
  readonly stream: string;
  /** The NATS URL(s) this instance uses, named in /asyncapi.json (credentials left out). */
  readonly natsUrl?: string;
  /** Who may read, send and operate what (docs/security.md). */
  readonly access: AccessPolicy;
  /** Durable commands' outcomes, for `GET /commands/:commandId`; absent when the durable intake is off. */
  readonly outcomes?: OutcomeStore | undefined;
}

/** What the HTTP server is assembled from. */
export interface HttpDeps {
  readonly log: Logger;
  readonly registry: MetricsSource;
  readonly checks: readonly ReadinessCheck[];
  /** Facts `/health/ready` reports without failing on them (e.g. projections caught up). */
  readonly reports?: readonly { readonly name: string; value(): unknown }[];
  /** How requests authenticate (every route but health, metrics and the dashboard page). */
  readonly auth: Authenticator;
  readonly api: ApiDeps;
}

/** Longest path parameter the router takes: an aggregate ID is at most 128 characters; view keys are the projection's own values. */
export const MAX_PARAM_LENGTH = 1024;

/** Builds the fastify server from its plugins; listening is the caller's choice (tests use inject). */
export function buildHttpServer(deps: HttpDeps): FastifyInstance {
  const app = Fastify({
    loggerInstance: deps.log.child({ component: 'http' }) as unknown as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // Refuse unknown query parameters instead of silently dropping them (schemas say additionalProperties: false).
    ajv: { customOptions: { removeAdditional: false } },
    // What the router and Node's HTTP parser refuse before any route runs gets the documented shape too.
    frameworkErrors: frameworkErrors(MAX_PARAM_LENGTH),
    clientErrorHandler,
  });
  // First: the error and not-found handlers apply to every route registered after them.
  void app.register(errorHandling);
  void app.register(authentication, { auth: deps.auth });
  void app.register(healthRoutes, { checks: deps.checks, reports: deps.reports ?? [] });
  void app.register(dashboardRoutes);
  void app.register(metricsRoute, { registry: deps.registry });
  void app.register(aggregateRoutes, { api: deps.api });
  void app.register(commandRoutes, { api: deps.api });
  void app.register(outcomeRoute, { api: deps.api });
  void app.register(viewRoutes, { api: deps.api });
  void app.register(projectionRoutes, { api: deps.api });
  void app.register(clusterRoute, { api: deps.api });
  void app.register(processRoutes, { api: deps.api });
  void app.register(catalogRoute, { api: deps.api });
  void app.register(asyncApiRoute, { api: deps.api });
  void app.register(openApiRoute, { api: deps.api });
  return app;
}
