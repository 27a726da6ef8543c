/**
 * Why a projection batch carries its values as SQL literals: the same 500-row
 * `INSERT … ON CONFLICT DO UPDATE` of order_list rows, built and sent two ways on one
 * connection to a throwaway embedded PostgreSQL (server defaults):
 *
 *   - parameters: `$1 … $4000` and a values array, what `pg` sends by the extended protocol
 *     (the raw baseline of bench/projections.bench.ts builds its statement this way);
 *   - literals: the values quoted by src/projections/sql.ts into the statement text, sent by the
 *     simple protocol, as the runner sends a batch.
 *
 * Rounds alternate the two (`--rounds`, each `--batches` statements); printed per round: ms per
 * statement (wall) and the client's CPU per statement to build and encode it; then the medians
 * and the ratio literal/parameters.
 *
 *   node --import tsx bench/sql-literals.micro.ts [--rounds 3] [--batches 60] [--rows 500]
 */
import pg from 'pg';
import { orderList } from '../actors/index.js';
import { literal } from '../src/projections/sql.js';
import { fmt2, hardLimit, intArg, machineLine, median, parseArgs, runBenchMain, startBenchDatabase } from './support.js';

const args = parseArgs();
const ROUNDS = intArg(args, 'rounds', 3);
const BATCHES = intArg(args, 'batches', 60);
const ROWS = intArg(args, 'rows', 500);

const COLS = ['order_id', 'customer_id', 'status', 'item_count', 'total_cents', 'placed_at', 'version', 'updated_at'] as const;
type OrderRow = Record<(typeof COLS)[number], string | number>;
const UPDATE = COLS.slice(1)
  .map((c) => `${c} = EXCLUDED.${c}`)
  .join(', ');

let serial = 0;
function rows(): OrderRow[] {
  const time = new Date().toISOString();
  return Array.from({ length: ROWS }, (_, i) => ({
    order_id: `order-${++serial}`,
    customer_id: `C${i % 100}`,
    status: 'placed',
    item_count: 3,
    total_cents: 1234 + i,
    placed_at: time,
    version: 1,
    updated_at: time,
  }));
}

function withParameters(batch: readonly OrderRow[]): { text: string; values: unknown[] } {
  const values: unknown[] = [];
  const tuples = batch.map((r) => `(${COLS.map((c) => (values.push(r[c]), `$${values.length}`)).join(', ')})`);
  return { text: `INSERT INTO order_list (${COLS.join(', ')}) VALUES ${tuples.join(', ')} ON CONFLICT (order_id) DO UPDATE SET ${UPDATE}`, values };
}

function withLiterals(batch: readonly OrderRow[]): string {
  const tuples = batch.map((r) => `(${COLS.map((c) => literal(r[c])).join(', ')})`);
  return `INSERT INTO order_list (${COLS.join(', ')}) VALUES ${tuples.join(', ')} ON CONFLICT (order_id) DO UPDATE SET ${UPDATE}`;
}

async function main(): Promise<number> {
  console.log(`sql-literals.micro: ${machineLine()}`);
  const db = await startBenchDatabase('strand-bench-sql-');
  const limit = hardLimit(290_000, db.cleanup);
  try {
    const c = new pg.Client({ connectionString: db.pgServer.url, application_name: 'bench-sql-literals' });
    await c.connect();
    for (const m of orderList.migrations) await c.query(m);
    console.log(`PostgreSQL: ${(await c.query('SHOW server_version')).rows[0].server_version} (embedded, server defaults) | ${BATCHES} statements of ${ROWS} rows per round`);
    const modes = {
      parameters: async (batch: OrderRow[]) => {
        const { text, values } = withParameters(batch);
        await c.query(text, values);
      },
      literals: async (batch: OrderRow[]) => {
        await c.query(withLiterals(batch));
      },
    };
    const results: Record<keyof typeof modes, { ms: number[]; cpu: number[] }> = { parameters: { ms: [], cpu: [] }, literals: { ms: [], cpu: [] } };
    for (let round = 1; round <= ROUNDS; round++) {
      for (const name of Object.keys(modes) as (keyof typeof modes)[]) {
        await db.admin.query('CHECKPOINT');
        const batches = Array.from({ length: BATCHES }, () => rows());
        const t0 = performance.now();
        const cpu0 = process.cpuUsage();
        for (const b of batches) await modes[name](b);
        const cpu = process.cpuUsage(cpu0);
        const ms = (performance.now() - t0) / BATCHES;
        const cpuMs = (cpu.user + cpu.system) / 1000 / BATCHES;
        results[name].ms.push(ms);
        results[name].cpu.push(cpuMs);
        console.log(`  round ${round} ${name.padEnd(10)}: ${fmt2(ms)} ms per statement, client CPU ${fmt2(cpuMs)} ms per statement`);
      }
    }
    await c.end();
    const p = median(results.parameters.ms);
    const l = median(results.literals.ms);
    console.log(`parameters: ${fmt2(p)} ms per statement (median), client CPU ${fmt2(median(results.parameters.cpu))} ms`);
    console.log(`literals  : ${fmt2(l)} ms per statement (median), client CPU ${fmt2(median(results.literals.cpu))} ms`);
    console.log(`ratio literals/parameters (time per statement): ${fmt2(l / p)}`);
    return 0;
  } finally {
    clearTimeout(limit);
    await db.cleanup();
  }
}

runBenchMain(main);
