/**
 * SQL text for the read side's batches. A batch is sent as ONE simple-protocol message (its
 * statements separated by semicolons), which PostgreSQL runs as one implicit transaction: one
 * round trip per batch, and nothing half-applied when any statement fails. The simple protocol
 * takes no parameters, so values are written as literals, quoted here and nowhere else.
 */

/** Double-quotes an SQL identifier. Names come from projection code, never from clients. */
export function ident(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** `"schema"."name"`. */
export function qualified(schema: string, name: string): string {
  return `${ident(schema)}.${ident(name)}`;
}

const SPECIAL = /['\\\u0000]/;

/**
 * A string as an SQL literal. Quotes are doubled; a string with a backslash becomes an `E'…'`
 * literal with backslashes doubled, which reads the same whatever `standard_conforming_strings`
 * says. NUL cannot be stored in PostgreSQL text and would cut a simple-protocol message short,
 * so it is refused here (the event's handler fails, and the event is parked like any other).
 */
export function quote(s: string): string {
  if (!SPECIAL.test(s)) return `'${s}'`;
  if (s.includes('\u0000')) throw new Error('a text value contains NUL (\\u0000), which PostgreSQL cannot store');
  const body = s.replace(/'/g, "''");
  return s.includes('\\') ? `E'${body.replace(/\\/g, '\\\\')}'` : `'${body}'`;
}

/**
 * Any value a handler may write, as a literal of unknown type that PostgreSQL converts to the
 * column's type (as it does a parameter): null/undefined → NULL; numbers, bigints and booleans
 * in their text form; a Date as its ISO time; a Buffer as bytea hex; other objects and arrays as
 * JSON text (for json/jsonb columns).
 */
export function literal(v: unknown): string {
  switch (typeof v) {
    case 'string':
      return quote(v);
    case 'number':
      return Number.isFinite(v) ? `'${v}'` : `'${v === Infinity ? 'Infinity' : v === -Infinity ? '-Infinity' : 'NaN'}'`;
    case 'bigint':
      return `'${v}'`;
    case 'boolean':
      return v ? "'true'" : "'false'";
    case 'undefined':
      return 'NULL';
    case 'object':
      if (v === null) return 'NULL';
      if (v instanceof Date) {
        if (Number.isNaN(v.getTime())) throw new Error('an Invalid Date cannot be written');
        return `'${v.toISOString()}'`;
      }
      if (Buffer.isBuffer(v)) return `decode('${v.toString('hex')}', 'hex')`;
      return quote(JSON.stringify(v));
    default:
      throw new Error(`a ${typeof v} cannot be written to a column`);
  }
}

/** A literal cast to a column type (`'5'::integer`), for places where the type is not implied. */
export function typed(v: unknown, type: string): string {
  return `${literal(v)}::${type}`;
}
