import type { AccessPolicy, Principal } from '../src/live/auth.js';

/** The view of the care-tasks example whose rows a coordinator may watch. */
const TASK_VIEW = 'task_list_view';
/** The aggregate of the care-tasks example. */
const TASK_AGGREGATE = 'task';

const isAdmin = (p: Principal): boolean => p.roles.includes('admin');
const isCoordinator = (p: Principal): boolean => p.roles.includes('coordinator');

/**
 * The example authorization rule of the care-tasks domain: a coordinator sees only their own
 * tasks. The principal's `sub` is the coordinator's ID, the value tasks carry in `assignedTo`.
 *
 * - Role `admin`: may subscribe to anything, and sees every row.
 * - Role `coordinator`:
 *   - view `task_list_view` with a filter whose `assignedTo` is the coordinator's own ID (other
 *     filter columns, e.g. `status`, may be added alongside);
 *   - view `task_list_view` by `key` (one task): allowed, but the row is shown only while its
 *     `assignedTo` is the coordinator (`canSee`), so a task assigned to someone else stays
 *     invisible, and one reassigned away disappears;
 *   - the events of `task` aggregate instances, by ID. Row-level checks are NOT applied to
 *     aggregate streams: a coordinator who knows a task's ID can follow its events, whoever it
 *     is assigned to. A stricter rule would look the task up before allowing it.
 *   - anything else (other views, other aggregates, a filter without their own `assignedTo`,
 *     no filter at all) is refused.
 * - Any other principal (no `admin` or `coordinator` role) may not subscribe to anything.
 *
 * `canSee` is applied to every row of every view subscription, filtered ones included: a
 * coordinator never receives a row that is not assigned to them.
 */
export const taskAccess: AccessPolicy = {
  canSubscribe(principal, request) {
    if (isAdmin(principal)) return true;
    if (!isCoordinator(principal)) return 'live subscriptions need the admin or coordinator role';
    if (request.kind === 'aggregate') {
      return request.aggregate === TASK_AGGREGATE ? true : 'coordinators may subscribe only to task aggregates';
    }
    if (request.view !== TASK_VIEW) return `coordinators may subscribe only to the ${TASK_VIEW} view`;
    if (request.key !== undefined) return true;
    const filter = request.filter;
    if (filter && Object.hasOwn(filter, 'assignedTo') && filter.assignedTo === principal.sub) return true;
    return `coordinators must filter ${TASK_VIEW} on assignedTo = their own ID (or subscribe to one task by key)`;
  },

  canSee(principal, view, row) {
    if (isAdmin(principal)) return true;
    return isCoordinator(principal) && view === TASK_VIEW && row.assignedTo === principal.sub;
  },
};
