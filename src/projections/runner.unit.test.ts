import { describe, expect, it } from 'vitest';
import { isTransient } from './runner.js';

describe('isTransient', () => {
  it('blames the database for lost connections and server shutdowns', () => {
    expect(isTransient(Object.assign(new Error('x'), { code: '57P01' }))).toBe(true); // admin shutdown
    expect(isTransient(Object.assign(new Error('x'), { code: '08006' }))).toBe(true); // connection failure
    expect(isTransient(Object.assign(new Error('x'), { code: '53300' }))).toBe(true); // too many connections
    expect(isTransient(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(isTransient(new Error('Connection terminated unexpectedly'))).toBe(true);
  });

  it('blames the event for data errors and handler exceptions', () => {
    expect(isTransient(Object.assign(new Error('x'), { code: '23502' }))).toBe(false); // not null violation
    expect(isTransient(Object.assign(new Error('x'), { code: '22P02' }))).toBe(false); // bad text representation
    expect(isTransient(new Error('cannot handle this customer'))).toBe(false);
    expect(isTransient('a string')).toBe(false);
  });
});
