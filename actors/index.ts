/**
 * The aggregates, process managers and projections `npm start` runs: the examples that ship with Strand.
 * Their rejections are listed in docs/errors.md ("Reasons of the example aggregates"), their
 * projections in docs/projections.md ("The example projections"); README.md shows them at work.
 */
import { eligibilityCheck } from './eligibility-check/eligibility-check.js';
import { order } from './order/order.js';
import { task, taskOverdue } from './task/task.js';
import { member } from './member/member.js';
import { memberOnboarding } from './member-onboarding/member-onboarding.js';
import { orderFulfilment } from './order-fulfilment/order-fulfilment.js';
import { processInstancesProjection } from '../src/processes/projection.js';
import { eligibilityMetrics } from './eligibility-check/projections.js';
import { orderList } from './order/projections.js';
import { memberTaskHistory, taskAnalytics, taskListView } from './task/projections.js';

export { eligibilityCheck, member, order, task, taskOverdue };
export { memberOnboarding, orderFulfilment };
export { eligibilityMetrics, memberTaskHistory, orderList, taskAnalytics, taskListView };
export type { EligibilityCheckState, EligibilityCheckStatus } from './eligibility-check/eligibility-check.js';
export type { OrderItem, OrderState, OrderStatus } from './order/order.js';
export type { TaskState, TaskStatus } from './task/task.js';
export type { MemberState, MemberStatus } from './member/member.js';

export const aggregates = [task, order, eligibilityCheck, member] as const;

/** The example process managers (docs/processes.md): they send commands to the aggregates above. */
export const processes = [orderFulfilment, memberOnboarding] as const;

/** The example projections: PostgreSQL read models of the aggregates above. */
export const projections = [taskListView, memberTaskHistory, taskAnalytics, orderList, eligibilityMetrics, processInstancesProjection(processes)] as const;
