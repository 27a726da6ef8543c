/**
 * A Strand instance as its own process, with the example process managers on short timings: what
 * `npm start` runs (src/main.ts) minus the embedded servers and the read side, with the payment
 * window and the onboarding's deadlines from the environment, so tests can see deadlines fire.
 *
 *   NATS_URL=… STRAND_TEST_PAYMENT_WINDOW_MS=5000 node --import tsx test/support/processes-instance.ts
 *
 * STRAND_TEST_PAYMENT_WINDOW_MS (order-fulfilment's payment-due), STRAND_TEST_PROFILE_SETUP_MS and
 * STRAND_TEST_ABANDON_AFTER_MS (member-onboarding's two deadlines): the examples' defaults when unset.
 * Run by {@link spawnInstance} with `entry`; SIGTERM drains and exits 0, as src/main.ts does.
 */
import { aggregates } from '../../actors/index.js';
import { makeMemberOnboarding } from '../../actors/member-onboarding/member-onboarding.js';
import { makeOrderFulfilment } from '../../actors/order-fulfilment/order-fulfilment.js';
import { Strand } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/observability/logger.js';

function ms(name: string): number | undefined {
  const v = process.env[name];
  return v ? Number(v) : undefined;
}

const config = loadConfig();
if (!config.NATS_URL) throw new Error('NATS_URL must be set');
const log = createLogger(config.LOG_LEVEL, { pretty: false });
const payment = ms('STRAND_TEST_PAYMENT_WINDOW_MS');
const setup = ms('STRAND_TEST_PROFILE_SETUP_MS');
const abandon = ms('STRAND_TEST_ABANDON_AFTER_MS');
const processes = [
  makeOrderFulfilment(payment !== undefined ? { paymentWindowMs: payment } : {}),
  makeMemberOnboarding({ ...(setup !== undefined ? { profileSetupMs: setup } : {}), ...(abandon !== undefined ? { abandonAfterMs: abandon } : {}) }),
];
const app = await Strand.start({ config, aggregates, processes, natsUrl: config.NATS_URL, log });
await app.http.listen({ port: config.PORT, host: '127.0.0.1' });
log.info({ processes: processes.map((p) => p.name), payment, setup, abandon }, 'Strand ready (test instance with processes)');

let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  void app.stop().then(
    (clean) => {
      log.info({ clean }, 'stopped');
      process.exit(0);
    },
    (err: unknown) => {
      log.error({ err }, 'stop failed');
      process.exit(1);
    },
  );
});
