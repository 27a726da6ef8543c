import type { AccessPolicy } from '../src/auth/access.js';
import type { Principal } from '../src/auth/tokens.js';
import type { TaskState } from './task/task.js';

/** The view of the care-tasks example whose rows a coordinator may watch. */
const TASK_VIEW = 'task_list_view';
/** The aggregate of the care-tasks example. */
const TASK_AGGREGATE = 'task';

const isAdmin = (p: Principal): boolean => p.roles.includes('admin');
const isCoordinator = (p: Principal): boolean => p.roles.includes('coordinator');

/**
 * The example authorization rule of the care-tasks domain: a coordinator sees and completes only
 * their own tasks. The principal's `sub` is the coordinator's ID, the value tasks carry in
 * `assignedTo`.
 *
 * - Role `admin`: may read and send anything, and operate the read side (rebuilds, dead
 *   letters); sees every row. (The aggregates' own rules still apply: an admin who completes a
 *   task assigned to someone else is refused `NOT_ASSIGNEE` by the task itself.)
 * - Role `coordinator`:
 *   - view `task_list_view` with a filter whose `assignedTo` is the coordinator's own ID (other
 *     filter columns, e.g. `status`, may be added alongside);
 *   - view `task_list_view` by `key` (one task): allowed, but the row is shown only while its
 *     `assignedTo` is the coordinator (`canSee`), so a task assigned to someone else stays
 *     invisible, and one reassigned away disappears;
 *   - the events and state of `task` aggregate instances, by ID. Row-level checks are NOT
 *     applied to aggregates: a coordinator who knows a task's ID can follow its events, whoever
 *     it is assigned to. A stricter rule would look the task up before allowing it.
 *   - commands to `task` instances; `CompleteTask` only on a task assigned to them — checked in
 *     `canDecide`, on the state the command is decided on, so a task reassigned a moment ago is
 *     judged as it is now; not `MarkOverdue`, which Strand sends itself when a task falls due;
 *   - anything else (other views, other aggregates, a filter without their own `assignedTo`,
 *     no filter at all, operating projections) is refused. That includes `process_instances`
 *     (the dashboard's Processes panel): its rows are every customer's and member's process
 *     instances and carry no owner to match a coordinator against.
 * - Any other principal (no `admin` or `coordinator` role) may do nothing.
 *
 * `canSee` is applied to every row of every view read, filtered ones included: a coordinator
 * never receives a row that is not assigned to them.
 */
export const taskAccess: AccessPolicy = {
  canSubscribe(principal, request) {
    if (isAdmin(principal)) return true;
    if (!isCoordinator(principal)) return 'reading needs the admin or coordinator role';
    if (request.kind === 'aggregate') {
      return request.aggregate === TASK_AGGREGATE ? true : 'coordinators may read only task aggregates';
    }
    if (request.view !== TASK_VIEW) return `coordinators may read only the ${TASK_VIEW} view`;
    if (request.key !== undefined) return true;
    const filter = request.filter;
    if (filter && Object.hasOwn(filter, 'assignedTo') && filter.assignedTo === principal.sub) return true;
    return `coordinators must filter ${TASK_VIEW} on assignedTo = their own ID (or read one task by key)`;
  },

  canSee(principal, view, row) {
    if (isAdmin(principal)) return true;
    return isCoordinator(principal) && view === TASK_VIEW && row.assignedTo === principal.sub;
  },

  canCommand(principal, command) {
    if (isAdmin(principal)) return true;
    if (!isCoordinator(principal)) return 'commands need the admin or coordinator role';
    if (command.aggregate !== TASK_AGGREGATE) return 'coordinators may send commands only to tasks';
    // Strand sends it itself when the task's overdue deadline fires.
    return command.command === 'MarkOverdue' ? 'MarkOverdue is sent by Strand when a task falls due' : true;
  },

  canDecide(principal, command, state) {
    if (isAdmin(principal) || command.aggregate !== TASK_AGGREGATE || command.command !== 'CompleteTask') return true;
    return (state as TaskState).assignedTo === principal.sub ? true : 'coordinators may complete only tasks assigned to them';
  },

  canOperate(principal, operation) {
    return isAdmin(principal) ? true : `${operation.action} needs the admin role`;
  },
};
