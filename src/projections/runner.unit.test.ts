import { describe, expect, it } from 'vitest';
import { isTransient } from './runner.js';

describe('isTransient', () => {
  it('blames the database for lost connections and server shutdowns', () => {
    expect(isTransient(Object.assign(new Error('x'), { code: '57P01' }))).toBe(true); // admin shutdown
    expect(isTransient(Object.assign(new Error('x'), { code: '08006' }))).toBe(true); // connection failure
    expect(isTransient(Object.assign(new Error('x'), { code: '53300' }))).toBe(true); // too many connections
    expect(isTransient(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(isTransient(new Error('Connection terminated unexpectedly'))).toBe(true);
    expect(isTransient(Object.assign(new Error('x'), { code: '40P01' }))).toBe(true); // deadlock: try again
  });

  it('blames the event for data errors and handler exceptions', () => {
    expect(isTransient(Object.assign(new Error('x'), { code: '23502' }))).toBe(false); // not null violation
    expect(isTransient(Object.assign(new Error('x'), { code: '22P02' }))).toBe(false); // bad text representation
    expect(isTransient(new Error('cannot handle this customer'))).toBe(false);
    expect(isTransient('a string')).toBe(false);
    expect(isTransient(undefined)).toBe(false);
    expect(isTransient(null)).toBe(false);
    // strand_advance's own codes are handled by the runner, never retried as the database's fault
    expect(isTransient(Object.assign(new Error('x'), { code: 'SR001' }))).toBe(false);
  });
});
