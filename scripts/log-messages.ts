/**
 * Every log line Strand's code can write: the message of each pino call (`log.info(…, 'msg')`,
 * `this.log.warn(…)`, `req.log.error(…)`, …) in src/, found with the TypeScript parser. A
 * template literal's `${…}` parts become `…`. test/docs.unit.test.ts compares this list with the
 * catalog in docs/operations.md, both ways. Run it to print the list:
 *
 *   npx tsx scripts/log-messages.ts
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

export interface LogMessage {
  readonly level: string;
  readonly msg: string;
  readonly file: string;
}

const LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error', 'fatal']);
const root = fileURLToPath(new URL('..', import.meta.url));

function files(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...files(p));
    else if (p.endsWith('.ts') && !p.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

/** A message as it is compared: `${…}` (code) and `<…>` (docs) both become `…`. */
export function normaliseMessage(text: string): string {
  return text.replace(/\$\{[^}]*\}/g, '…').replace(/<[^<>]*>/g, '…');
}

/** The message(s) an argument can be: a string, a template, or either branch of `c ? 'a' : 'b'`. */
function texts(node: ts.Node): string[] {
  if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return [node.text];
  if (ts.isTemplateExpression(node)) return [node.head.text + node.templateSpans.map((s) => `\${x}${s.literal.text}`).join('')];
  if (ts.isConditionalExpression(node)) return [...texts(node.whenTrue), ...texts(node.whenFalse)];
  if (ts.isParenthesizedExpression(node)) return texts(node.expression);
  return [];
}

/** Whether a call's receiver is a logger: `log`, `this.log`, `req.log`, `app.log`, `o.log`, `deps.log`… */
function isLogger(expr: ts.Expression): boolean {
  if (ts.isIdentifier(expr)) return /^(log|logger)$/i.test(expr.text);
  if (ts.isPropertyAccessExpression(expr)) return /^(log|logger)$/i.test(expr.name.text);
  return false;
}

export function logMessages(): LogMessage[] {
  const out: LogMessage[] = [];
  for (const file of files(join(root, 'src'))) {
    const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
    const visit = (node: ts.Node): void => {
      if (ts.isCallExpression(node) && ts.isPropertyAccessExpression(node.expression) && LEVELS.has(node.expression.name.text) && isLogger(node.expression.expression)) {
        const args = node.arguments;
        const last = args[args.length - 1];
        for (const msg of last ? texts(last) : []) out.push({ level: node.expression.name.text, msg: normaliseMessage(msg), file: relative(root, file) });
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  return out;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const m of logMessages().sort((a, b) => a.file.localeCompare(b.file) || a.msg.localeCompare(b.msg))) console.log(`${m.level}\t${m.msg}\t${m.file}`);
}
