/** Declaring aggregates: the only module a user's aggregate file imports. */
export { defineAggregate, reject, type Aggregate, type DecidedEvent, type EventType } from './define.js';
export {
  Rejection,
  type AggregateSpec,
  type CommandContext,
  type Decision,
  type EventContext,
  type EventData,
  type EventMetadata,
  type EventSpec,
  type Issuer,
  type NewEvent,
  type Upcaster,
  type VersionedEvent,
} from './types.js';
