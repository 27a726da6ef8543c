/**
 * The live dashboard (`GET /dashboard`, src/live/dashboard.html) end to end: a real nats-server,
 * PostgreSQL and Strand listening on a port, and the page in headless Chromium (Debian's
 * `chromium` package, driven by playwright-core). Commands sent over NATS show on the page
 * within a second, the page's own controls send commands, the Processes panel shows
 * `process_instances` live (and only a note when the token may not read it), and the page
 * recovers when the server restarts on the same port.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { SignJWT } from 'jose';
import pino from 'pino';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { taskAccess } from '../actors/access.js';
import { aggregates, processes, projections } from '../actors/index.js';
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { CommandClient } from './support/strand.js';

const CHROMIUM = '/usr/bin/chromium';
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) {
  console.warn(`dashboard.e2e: skipped, ${CHROMIUM} is missing (install Debian's chromium package; .ci/run does)`);
}

const COORDINATOR = 'CC456';
// `dev` mode (no token: the admin `dev` principal), but a token that is sent is verified, and
// the example access policy applies to it: a coordinator's token is refused process_instances.
const SECRET = 'a-dashboard-test-secret-of-32-chars-or-more';
const ENV = { STRAND_PROJECTION_BATCH_MS: '5', STRAND_AUTH: 'dev', STRAND_JWT_SECRET: SECRET };

/** Strand as `npm start` wires it: the example aggregates, processes, projections and access rule. */
function startStrand(natsUrl: string, databaseUrl: string): Promise<Strand> {
  const config = loadConfig({ STRAND_ACTOR_IDLE_MS: '600000', STRAND_PROJECTION_STANDBY_MS: '500', ...ENV });
  const log = pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' });
  return Strand.start({ config, aggregates, processes, projections, access: taskAccess, natsUrl, databaseUrl, log, defaultMetrics: false });
}
const coordinatorToken = (sub: string): Promise<string> =>
  new SignJWT({ roles: ['coordinator'] }).setProtectedHeader({ alg: 'HS256' }).setSubject(sub).setExpirationTime('10m').sign(new TextEncoder().encode(SECRET));

const newId = (): string => `task-e2e-${randomBytes(5).toString('hex')}`;

describe.skipIf(!hasChromium)('the live dashboard in headless Chromium', () => {
  let nats: TestNats;
  let db: TestDatabase;
  let strand: Strand | undefined;
  let client: CommandClient;
  let browser: Browser;
  let page: Page;
  let port: number;
  /** Errors the page reported (console errors, uncaught exceptions, CSP violations). */
  const pageErrors: string[] = [];
  /** The page's WebSocket traffic, printed when a test fails. */
  const frames: string[] = [];
  function note(line: string): void {
    frames.push(`${new Date().toISOString().slice(11, 23)} ${line}`.slice(0, 400));
    if (frames.length > 300) frames.shift();
  }

  const card = (id: string) => page.locator(`[data-testid="task-${id}"]`);
  const connection = () => page.locator('[data-testid="connection"]').textContent();

  async function waitForConnection(state: string, timeout: number): Promise<void> {
    await page.locator('[data-testid="connection"]').filter({ hasText: new RegExp(`^${state}$`) }).waitFor({ timeout });
  }

  /**
   * Records in the page the moment (Date.now(), the same clock as this process) the card of
   * `id` is in the DOM and visible: a MutationObserver, so the measure does not include
   * Playwright's own round trips. Install before sending the command; read with shownAt.
   */
  async function watchCard(id: string): Promise<void> {
    await page.evaluate(`(() => {
      const shownAt = (window.__shownAt ??= {});
      const sel = '[data-testid="task-' + ${JSON.stringify(id)} + '"]';
      const check = () => {
        const el = document.querySelector(sel);
        if (el === null || !el.checkVisibility()) return false;
        shownAt[${JSON.stringify(id)}] = Date.now();
        return true;
      };
      if (check()) return;
      const obs = new MutationObserver(() => { if (check()) obs.disconnect(); });
      obs.observe(document.body, { childList: true, subtree: true, attributes: true });
    })()`);
  }
  async function shownAt(id: string): Promise<number> {
    await card(id).waitFor({ state: 'visible', timeout: 5000 });
    return (await page.evaluate(`window.__shownAt[${JSON.stringify(id)}]`)) as number;
  }

  async function listen(s: Strand, p = 0): Promise<number> {
    await s.http.listen({ port: p, host: '127.0.0.1' });
    return (s.http.server.address() as AddressInfo).port;
  }

  async function createOverNats(id: string, data: { title: string; memberId: string; assignedTo: string }): Promise<void> {
    const reply = await client.send(`cmd.task.${id}.CreateTask`, data, { 'Strand-Actor': 'user:test' });
    expect(reply, JSON.stringify(reply)).toMatchObject({ ok: true, version: 1 });
  }

  beforeAll(async () => {
    nats = await startTestNats();
    db = await createTestDatabase();
    strand = await startStrand(nats.url, db.url);
    port = await listen(strand);
    client = await CommandClient.connect(nats.url);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    page.on('console', (m) => {
      // Expected: refused connections while the server is down, and the 422 of the rejected command.
      const expected = /WebSocket connection to .* failed|the server responded with a status of 422/;
      if (m.type() === 'error' && !expected.test(m.text())) pageErrors.push(m.text());
    });
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    // The WebSocket traffic, printed when a test fails.
    page.on('websocket', (ws) => {
      const log = note;
      log(`open ${ws.url().replace(/access_token=[^&]*/, 'access_token=…')}`);
      ws.on('framesent', (f) => log(`> ${String(f.payload)}`));
      ws.on('framereceived', (f) => log(`< ${String(f.payload)}`));
      ws.on('close', () => log('closed'));
    });
  });

  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => console.log(`WebSocket frames so far:\n${frames.join('\n')}\npage errors: ${JSON.stringify(pageErrors)}`));
  });

  afterAll(async () => {
    await browser?.close().catch(() => undefined);
    await strand?.stop().catch(() => undefined);
    await client?.close().catch(() => undefined);
    await db?.drop().catch(() => undefined);
    await nats?.cleanup().catch(() => undefined);
  });

  it('serves the page with a strict content security policy', async () => {
    const res = await fetch(`http://127.0.0.1:${port}/dashboard`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(res.headers.get('content-security-policy')).toMatch(/default-src 'none'.*script-src 'sha256-/);
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
  });

  it('connects and goes live', async () => {
    await page.goto(`http://127.0.0.1:${port}/dashboard?coordinator=${COORDINATOR}`);
    await waitForConnection('live', 10_000);
    expect(await page.inputValue('#coordinator')).toBe(COORDINATOR);
  });

  let first: string;

  it('shows a task created over NATS within a second, and only the coordinator’s tasks', async () => {
    const other = newId();
    first = newId();
    const title = 'Call member <b>about</b> <img src=x onerror="window.__xss=1"> meds';
    await createOverNats(other, { title: 'someone else’s task', memberId: 'M-9', assignedTo: 'CC999' });
    await watchCard(first);
    await createOverNats(first, { title, memberId: 'M-1', assignedTo: COORDINATOR });
    const replied = Date.now();
    const ms = (await shownAt(first)) - replied;
    expect(ms, `the card appeared ${ms.toFixed(0)} ms after the command's reply`).toBeLessThan(1000);
    console.log(`dashboard.e2e: NATS reply -> card visible in ${ms.toFixed(0)} ms`);

    // Changes arrive in stream order: the other task, created first, would be here by now.
    expect(await card(other).count()).toBe(0);
    const c = card(first);
    expect(await c.getAttribute('data-status')).toBe('pending');
    expect(await page.locator(`[data-testid="column-pending"] [data-testid="task-${first}"]`).count()).toBe(1);
    // Text, not markup.
    expect(await c.locator('h3').textContent()).toBe(title);
    expect(await c.locator('img, b').count()).toBe(0);
    expect(await page.evaluate('window.__xss')).toBeUndefined();
    const text = await c.textContent();
    expect(text).toContain(first);
    expect(text).toContain('M-1');
    expect(await c.locator('[data-field="version"]').textContent()).toBe('1');
    expect(Number(await page.locator('[data-testid="version"]').textContent())).toBeGreaterThan(0);
  });

  it('completes a task with its Complete button: the card moves to the completed column', async () => {
    const before = Number(await page.locator('[data-testid="version"]').textContent());
    await card(first).getByRole('button', { name: /^Complete/ }).click();
    await page.locator(`[data-testid="column-completed"] [data-testid="task-${first}"][data-status="completed"]`).waitFor({ timeout: 5000 });
    expect(await card(first).locator('[data-field="version"]').textContent()).toBe('2');
    expect(await card(first).getByRole('button').count()).toBe(0);
    expect(Number(await page.locator('[data-testid="version"]').textContent())).toBeGreaterThan(before);
    expect(await page.locator('[data-testid="error"]').isHidden()).toBe(true);
    // Completed as the coordinator (Strand-Actor: user:CC456).
    const row = (await (await fetch(`http://127.0.0.1:${port}/views/task_list_view/${first}`)).json()) as { row: Record<string, unknown> };
    expect(row.row).toMatchObject({ status: 'completed', completedBy: COORDINATOR });
  });

  it('creates a task with the New task form and cancels it with a reason', async () => {
    const title = `Book transport ${randomBytes(3).toString('hex')}`;
    await page.fill('input[name="title"]', title);
    await page.fill('input[name="memberId"]', 'M-2');
    await page.getByRole('button', { name: 'New task' }).click();
    const created = page.locator('[data-testid="column-pending"] .card', { has: page.locator('h3', { hasText: title }) });
    await created.waitFor({ timeout: 5000 });
    const id = (await created.getAttribute('data-testid'))!.slice('task-'.length);
    expect(id).toMatch(/^task-[a-z0-9]+$/);
    expect(await page.inputValue('input[name="title"]')).toBe('');

    page.once('dialog', (d) => void d.accept('member moved away'));
    await card(id).getByRole('button', { name: /^Cancel/ }).click();
    await page.locator(`[data-testid="column-cancelled"] [data-testid="task-${id}"][data-status="cancelled"]`).waitFor({ timeout: 5000 });
    expect(await card(id).textContent()).toContain('member moved away');
    const row = (await (await fetch(`http://127.0.0.1:${port}/views/task_list_view/${id}`)).json()) as { row: Record<string, unknown> };
    expect(row.row).toMatchObject({ status: 'cancelled', cancelReason: 'member moved away', assignedTo: COORDINATOR, memberId: 'M-2' });
  });

  it('shows a command’s error', async () => {
    const id = newId();
    await createOverNats(id, { title: 'Refill prescription', memberId: 'M-3', assignedTo: COORDINATOR });
    await card(id).waitFor({ timeout: 5000 });
    // While the page's CompleteTask is on its way, someone else cancels the task over NATS.
    await page.route(`**/commands/task/${id}/CompleteTask`, async (route) => {
      const r = await client.send(`cmd.task.${id}.CancelTask`, { reason: 'duplicate' });
      expect(r.ok).toBe(true);
      await route.continue();
    });
    await card(id).getByRole('button', { name: /^Complete/ }).click();
    const error = page.locator('[data-testid="error"]');
    await error.waitFor({ state: 'visible', timeout: 5000 });
    expect(await error.textContent()).toMatch(/REJECTED \(TASK_CLOSED\)/);
    await page.unroute(`**/commands/task/${id}/CompleteTask`);
    await page.locator(`[data-testid="task-${id}"][data-status="cancelled"]`).waitFor({ timeout: 5000 });
  });

  const procRow = (id: string) => page.locator(`[data-testid="processes"] [data-testid="process-${id}"]`);
  let order: string;

  it('shows an order-fulfilment instance in the Processes panel, and its changes live', async () => {
    expect(await page.getByRole('heading', { name: /^Processes/ }).count()).toBe(1);
    order = `order-e2e-${randomBytes(5).toString('hex')}`;
    const item = { sku: 'SKU-1', quantity: 1, priceCents: 1000 };
    const placed = await client.send(`cmd.order.${order}.PlaceOrder`, { customerId: 'C1', items: [item] });
    expect(placed.ok, JSON.stringify(placed)).toBe(true);
    // Started: running at step 1, waiting for the payment with the deadline payment-due.
    const row = procRow(order);
    await row.and(page.locator('[data-status="running"]')).waitFor({ timeout: 10_000 });
    expect(await row.getAttribute('data-process')).toBe('order-fulfilment');
    expect(await row.locator('[data-field="process"]').textContent()).toBe('order-fulfilment');
    expect(await row.locator('[data-field="instance"]').textContent()).toBe(order);
    expect(await row.locator('[data-field="status"]').textContent()).toBe('running');
    expect(await row.locator('[data-field="step"]').textContent()).toBe('1');
    expect(await row.locator('[data-field="deadline"]').textContent()).toMatch(/^payment-due · \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$/);
    expect(await row.locator('[data-field="deadline"] time').getAttribute('datetime')).toMatch(/^\d{4}-\d{2}-\d{2}T/);
    // Newest first: the instance just started is the first row.
    expect(await page.locator('[data-testid="processes"] tr').first().getAttribute('data-testid')).toBe(`process-${order}`);

    // Paid: the process ships the order and, once Ship is accepted, completes.
    const paid = await client.send(`cmd.order.${order}.MarkPaid`, { paymentId: 'P-1' });
    expect(paid.ok, JSON.stringify(paid)).toBe(true);
    await row.and(page.locator('[data-status="completed"]')).waitFor({ timeout: 10_000 });
    expect(await row.locator('[data-field="status"]').textContent()).toBe('completed');
    expect(Number(await row.locator('[data-field="step"]').textContent())).toBeGreaterThanOrEqual(3);
    expect(await row.locator('[data-field="deadline"]').textContent()).toBe('–');
    expect(await procRow(order).count()).toBe(1);
    expect(await page.locator('[data-testid="processes-note"]').isHidden()).toBe(true);
    // The panel's live copy agrees with the read model.
    const res = (await (await fetch(`http://127.0.0.1:${port}/views/process_instances/${order}`)).json()) as { row: Record<string, unknown> };
    expect(res.row).toMatchObject({ process: 'order-fulfilment', instanceId: order, status: 'completed' });
    // A later instance goes on top: newest first.
    const later = `order-e2e-${randomBytes(5).toString('hex')}`;
    expect((await client.send(`cmd.order.${later}.PlaceOrder`, { customerId: 'C2', items: [item] })).ok).toBe(true);
    await procRow(later).waitFor({ timeout: 10_000 });
    const shown = await page.locator('[data-testid="processes"] tr').evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-testid')));
    expect(shown.slice(0, 2)).toEqual([`process-${later}`, `process-${order}`]);
    expect(await page.locator('[data-testid="processes-count"]').textContent()).toBe(String(shown.length));
    // (The board's error line still shows the previous test's TASK_CLOSED: nothing from the panel.)
    expect(await page.locator('[data-testid="error"]').textContent()).not.toMatch(/process/i);
  }, 30_000);

  it('with a coordinator token, the Processes panel shows a note (FORBIDDEN) and the board still works', async () => {
    const own = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    const errors: string[] = [];
    own.on('pageerror', (err) => errors.push(String(err)));
    own.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    try {
      await own.goto(`http://127.0.0.1:${port}/dashboard?coordinator=${COORDINATOR}&token=${await coordinatorToken(COORDINATOR)}`);
      const note = own.locator('[data-testid="processes-note"]');
      await note.waitFor({ state: 'visible', timeout: 10_000 });
      expect(await note.textContent()).toMatch(/FORBIDDEN/);
      await own.locator('[data-testid="connection"]').filter({ hasText: /^live$/ }).waitFor({ timeout: 10_000 });
      expect(await own.locator('[data-testid="processes"] tr').count()).toBe(0);
      expect(await own.locator('[data-testid="error"]').isHidden()).toBe(true);
      // The task board is unaffected: the coordinator's tasks show, and new ones arrive live.
      expect(await own.locator(`[data-testid="task-${first}"]`).count()).toBe(1);
      const id = newId();
      await createOverNats(id, { title: 'Check in after the refusal', memberId: 'M-5', assignedTo: COORDINATOR });
      await own.locator(`[data-testid="column-pending"] [data-testid="task-${id}"]`).waitFor({ timeout: 5000 });
      expect(await own.locator('[data-testid="connection"]').textContent()).toBe('live');
      expect(errors).toEqual([]);
    } finally {
      await own.close();
    }
  }, 30_000);

  it('recovers after the server restarts on the same port', async () => {
    const cardsBefore = await page.locator('.card').count();
    note('test: stopping the server');
    await strand!.stop();
    strand = undefined;
    note('test: stopped');
    await waitForConnection('reconnecting', 5000);

    strand = await startStrand(nats.url, db.url);
    expect(await listen(strand, port)).toBe(port);
    note('test: a new server listens on the same port');
    await waitForConnection('live', 15_000);
    // Resumed (or refreshed): what the page showed is still there.
    expect(await page.locator('.card').count()).toBe(cardsBefore);
    expect(await card(first).getAttribute('data-status')).toBe('completed');
    // The Processes panel came back too.
    expect(await procRow(order).getAttribute('data-status')).toBe('completed');
    expect(await page.locator('[data-testid="processes-note"]').isHidden()).toBe(true);

    const next = newId();
    await watchCard(next);
    await createOverNats(next, { title: 'Follow up after discharge', memberId: 'M-4', assignedTo: COORDINATOR });
    const replied = Date.now();
    const ms = (await shownAt(next)) - replied;
    console.log(`dashboard.e2e: after the restart, NATS reply -> card visible in ${ms.toFixed(0)} ms`);
    expect(await connection()).toBe('live');

    await page.screenshot({ path: '/tmp/dashboard.png', fullPage: true });
    expect(pageErrors).toEqual([]);
  }, 60_000);
});
