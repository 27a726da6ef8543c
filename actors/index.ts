/** The example aggregates that ship with Strand (DESIGN.md, "The example domains"). */
import { eligibilityCheck } from './eligibility-check/eligibility-check.js';
import { order } from './order/order.js';
import { task } from './task/task.js';

export { eligibilityCheck, order, task };
export type { EligibilityCheckState, EligibilityCheckStatus } from './eligibility-check/eligibility-check.js';
export type { OrderItem, OrderState, OrderStatus } from './order/order.js';
export type { TaskState, TaskStatus } from './task/task.js';

export const aggregates = [task, order, eligibilityCheck] as const;
