/**
 * The aggregates and projections `npm start` runs: the three examples that ship with Strand.
 * Their rejections are listed in docs/errors.md ("Reasons of the example aggregates"), their
 * projections in docs/projections.md ("The example projections"); README.md shows them at work.
 */
import { eligibilityCheck } from './eligibility-check/eligibility-check.js';
import { order } from './order/order.js';
import { task, taskOverdue } from './task/task.js';
import { eligibilityMetrics } from './eligibility-check/projections.js';
import { orderList } from './order/projections.js';
import { memberTaskHistory, taskAnalytics, taskListView } from './task/projections.js';

export { eligibilityCheck, order, task, taskOverdue };
export { eligibilityMetrics, memberTaskHistory, orderList, taskAnalytics, taskListView };
export type { EligibilityCheckState, EligibilityCheckStatus } from './eligibility-check/eligibility-check.js';
export type { OrderItem, OrderState, OrderStatus } from './order/order.js';
export type { TaskState, TaskStatus } from './task/task.js';

export const aggregates = [task, order, eligibilityCheck] as const;

/** The example projections: PostgreSQL read models of the aggregates above. */
export const projections = [taskListView, memberTaskHistory, taskAnalytics, orderList, eligibilityMetrics] as const;
