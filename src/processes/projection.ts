import { defineProjection, on } from '../projections/define.js';
import type { Projection } from '../projections/types.js';
import { INPUT_HANDLED, type InputHandled, type Process } from './define.js';

/**
 * The read model `process_instances`: one row per process instance of the given processes, with
 * its status, step, last input and next deadline, kept from each step's `InputHandled`.
 * View `process_instances`, filterable by process and status.
 */
export function processInstancesProjection(processes: readonly Process[]): Projection {
  return defineProjection({
    name: 'process_instances',
    version: 1,
    migrations: [
      `CREATE TABLE process_instances (
         process            text NOT NULL,
         instance_id        text NOT NULL,
         status             text NOT NULL,
         step               integer NOT NULL,
         last_input         text,
         next_deadline      text,
         next_deadline_at   timestamptz,
         commands_sent      integer NOT NULL DEFAULT 0,
         started_at         timestamptz,
         ended_at           timestamptz,
         version            integer NOT NULL,
         updated_at         timestamptz NOT NULL,
         PRIMARY KEY (process, instance_id))`,
      'CREATE INDEX process_instances_status ON process_instances (process, status, instance_id)',
    ],
    tables: { process_instances: { key: ['process', 'instance_id'] } },
    views: {
      process_instances: {
        relation: 'process_instances',
        key: 'instanceId',
        columns: {
          process: 'process',
          instanceId: 'instance_id',
          status: 'status',
          step: 'step',
          lastInput: 'last_input',
          nextDeadline: 'next_deadline',
          nextDeadlineAt: 'next_deadline_at',
          commandsSent: 'commands_sent',
          startedAt: 'started_at',
          endedAt: 'ended_at',
          version: 'version',
        },
        filters: ['process', 'status'],
      },
    },
    handlers: processes.map((p) =>
      on(p.aggregate, {
        [INPUT_HANDLED]: (e, db) => {
          const d = e.data as InputHandled;
          db.upsert('process_instances', {
            process: e.aggregate,
            instance_id: e.aggregateId,
            status: d.end ?? 'running',
            step: d.step,
            last_input: d.input.kind === 'event' ? `${d.input.aggregate}.${d.input.type}` : d.input.kind === 'reply' ? `reply ${d.input.type} ${d.input.accepted ? 'accepted' : (d.input.code ?? 'refused')}` : `deadline ${d.input.name}`,
            next_deadline: d.next?.name ?? null,
            next_deadline_at: d.next?.due ?? null,
            ...(d.step === 1 ? { started_at: e.time } : {}),
            ...(d.end ? { ended_at: e.time } : {}),
            version: e.version,
            updated_at: e.time,
          });
          if (d.commands.length > 0) db.increment('process_instances', { process: e.aggregate, instance_id: e.aggregateId }, { commands_sent: d.commands.length });
        },
      }),
    ),
  });
}
