/** The runner's plumbing: its queue of delivered messages and the signal that wakes its loop. */

/** Wakes the apply loop: a message arrived, a batch settled, the watermark moved, or it must stop. */
export class Wakeup {
  private waiter: (() => void) | undefined;
  private pending = false;

  wake(): void {
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w();
    } else this.pending = true;
  }

  wait(ms?: number): Promise<void> {
    if (this.pending) {
      this.pending = false;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(() => {
        if (this.waiter === done) this.waiter = undefined;
        resolve();
      }, ms);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.waiter = done;
    });
  }
}

/** Messages waiting to be applied, in stream order: taken from the front without copying the rest. */
export class MessageQueue<T> {
  private items: T[] = [];
  /** When each message arrived (performance.now()), beside it. */
  private arrivals: number[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  /** The oldest waiting message. */
  get first(): T | undefined {
    return this.items[this.head];
  }

  /** When the oldest waiting message arrived (undefined when none waits). */
  get oldest(): number | undefined {
    return this.arrivals[this.head];
  }

  push(m: T): void {
    this.items.push(m);
    this.arrivals.push(performance.now());
  }

  take(n: number): T[] {
    const out = this.items.slice(this.head, this.head + n);
    this.head += out.length;
    if (this.head === this.items.length) {
      this.items = [];
      this.arrivals = [];
      this.head = 0;
    } else if (this.head >= 4096 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.arrivals = this.arrivals.slice(this.head);
      this.head = 0;
    }
    return out;
  }

  /** Puts messages taken earlier back in front, in their order (as if they had just arrived). */
  putBack(msgs: readonly T[]): void {
    if (msgs.length === 0) return;
    const now = performance.now();
    this.items = [...msgs, ...this.items.slice(this.head)];
    this.arrivals = [...msgs.map(() => now), ...this.arrivals.slice(this.head)];
    this.head = 0;
  }
}
