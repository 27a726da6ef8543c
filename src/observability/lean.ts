import type { Registry } from 'prom-client';

/** One labelled series of a {@link LeanCounter}: a plain number, incremented without lookups. */
export class CounterSeries {
  value = 0;
  constructor(readonly labels: Readonly<Record<string, string>>) {}
  inc(n = 1): void {
    this.value += n;
  }
}

/** One labelled series of a {@link LeanHistogram}: bucket counts in a typed array. */
export class HistogramSeries {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(
    readonly labels: Readonly<Record<string, string>>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length);
  }
  /** Records `v`, `n` times (one figure for several sends of the same change). */
  observe(v: number, n = 1): void {
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (v <= b[i]!) {
        this.counts[i]! += n;
        break;
      }
    }
    this.sum += v * n;
    this.count += n;
  }
}

interface MetricValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

function labelsOf(names: readonly string[], values: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  names.forEach((n, i) => (out[n] = values[i] ?? ''));
  return out;
}

/** Series by label values, created on first use and kept: the part both lean metrics share. */
abstract class LeanMetric<S> {
  abstract readonly type: string;
  readonly aggregator = 'sum';
  protected readonly series = new Map<string, S>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
    registry: Registry,
  ) {
    registry.registerMetric(this as never);
  }

  protected abstract create(labels: Record<string, string>): S;
  protected abstract values(): MetricValue[];

  /** The series for these label values (create once, keep, and update it directly). */
  labels(...values: string[]): S {
    const key = values.join('\0');
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = this.create(labelsOf(this.labelNames, values))));
    return s;
  }

  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: MetricValue[] }> {
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: this.values() };
  }

  reset(): void {
    this.series.clear();
  }
}

/**
 * A Prometheus counter for the command path. prom-client hashes and validates the label set
 * on every `inc`, even on a cached child; here a series is a field bump and all formatting
 * happens at scrape time. Registers in a prom-client registry like any of its metrics.
 */
export class LeanCounter extends LeanMetric<CounterSeries> {
  readonly type = 'counter';

  protected create(labels: Record<string, string>): CounterSeries {
    return new CounterSeries(labels);
  }

  protected values(): MetricValue[] {
    return [...this.series.values()].map((s) => ({ value: s.value, labels: { ...s.labels } }));
  }
}

/** A Prometheus histogram with the same scrape-time-only cost model as {@link LeanCounter}. */
export class LeanHistogram extends LeanMetric<HistogramSeries> {
  readonly type = 'histogram';

  constructor(name: string, help: string, labelNames: readonly string[], readonly buckets: readonly number[], registry: Registry) {
    super(name, help, labelNames, registry);
  }

  protected create(labels: Record<string, string>): HistogramSeries {
    return new HistogramSeries(labels, this.buckets);
  }

  protected values(): MetricValue[] {
    const values: MetricValue[] = [];
    for (const s of this.series.values()) {
      let cumulative = 0;
      this.buckets.forEach((le, i) => {
        cumulative += s.counts[i]!;
        values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le }, value: cumulative });
      });
      values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le: '+Inf' }, value: s.count });
      values.push({ metricName: `${this.name}_sum`, labels: { ...s.labels }, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: { ...s.labels }, value: s.count });
    }
    return values;
  }
}
