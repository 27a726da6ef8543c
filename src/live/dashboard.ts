import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { FastifyPluginAsync } from 'fastify';

/**
 * `GET /dashboard`: a live care-task board per coordinator (`?coordinator=CC456`, optional
 * `&token=…` passed on to the WebSocket as `access_token`). One self-contained page
 * (dashboard.html: plain HTML, CSS and JS, no build step) that subscribes to `task_list_view`
 * on `/live` and sends commands with `POST /commands/task/:id/:command`; its Processes panel
 * subscribes to `process_instances` on the same connection.
 */

const PAGE = new URL('./dashboard.html', import.meta.url);

/** CSP source expressions (`'sha256-…'`) for the page's inline `<script>` or `<style>` blocks. */
export function inlineHashes(html: string, tag: 'script' | 'style'): string[] {
  const out: string[] = [];
  for (const m of html.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, 'g'))) {
    out.push(`'sha256-${createHash('sha256').update(m[1]!, 'utf8').digest('base64')}'`);
  }
  return out;
}

export const dashboardRoutes: FastifyPluginAsync = async (app) => {
  const html = await readFile(PAGE, 'utf8');
  // Only the page's own inline code runs; it talks only to this origin (HTTP and WebSocket).
  const csp = [
    "default-src 'none'",
    `script-src ${inlineHashes(html, 'script').join(' ')}`,
    `style-src ${inlineHashes(html, 'style').join(' ')}`,
    "connect-src 'self'",
    'img-src data:',
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');

  app.get('/dashboard', async (_req, reply) =>
    reply
      .header('content-security-policy', csp)
      .header('x-content-type-options', 'nosniff')
      // The URL may carry a token: keep it out of Referer headers and caches.
      .header('referrer-policy', 'no-referrer')
      .header('cache-control', 'no-store')
      .type('text/html; charset=utf-8')
      .send(html),
  );
};
