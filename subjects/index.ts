/** The public contract's names: subjects, headers, the stream and bucket configuration. */
export {
  ALL_COMMANDS,
  ALL_LIVE_CHANGES,
  LIVE_PREFIX,
  liveChanges,
  ALL_EVENTS,
  COMMAND_PREFIX,
  EVENT_PREFIX,
  CommandHeader,
  EventHeader,
  JetStreamHeader,
  aggregateEvents,
  commandSubject,
  eventSubject,
  instanceEvents,
  isAggregateId,
  isAggregateName,
  isMessageName,
  parseCommandSubject,
  parseEventSubject,
  type ParsedCommandSubject,
} from './subjects.js';
export { compareStreamConfig, snapshotBucketName, streamConfig, type EventStreamOptions } from './stream.js';
