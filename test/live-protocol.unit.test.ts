/** Reading client frames of `/live` (src/live/protocol.ts): what is refused, and what is accepted as sent. */
import { describe, expect, it } from 'vitest';
import { parseClientMessage } from '../src/live/protocol.js';

describe('parseClientMessage', () => {
  it('refuses a filter key that would reach Object.prototype, naming it, instead of dropping it', () => {
    for (const key of ['__proto__', 'constructor', 'prototype']) {
      const r = parseClientMessage(`{"type":"subscribe","id":"s","view":"task_list_view","filter":{"${key}":"x"}}`);
      expect(r, key).toEqual({ ok: false, error: `filter.${key}: ${key} is not a column name`, sub: 's' });
    }
    // Nested under __proto__: what the issue report sent, which used to mean "no filter".
    const nested = parseClientMessage('{"type":"subscribe","id":"s","view":"task_list_view","filter":{"__proto__":{"assignedTo":"x"}}}');
    expect(nested.ok).toBe(false);
  });

  it('refuses a __proto__ key on any message, and filter values that are not strings', () => {
    for (const text of [
      '{"type":"subscribe","id":"s","view":"v","__proto__":{"filter":{}}}',
      '{"type":"subscribe","id":"s","aggregate":"task","aggregateId":"t","__proto__":{"afterVersion":1}}',
      '{"type":"ping","__proto__":{"nonce":"x"}}',
      '{"type":"unsubscribe","id":"s","__proto__":{}}',
      '{"type":"subscribe","id":"s","view":"v","filter":{"assignedTo":5}}',
      '{"type":"subscribe","id":"s","view":"v","filter":{"assignedTo":null}}',
      '{"type":"subscribe","id":"s","view":"v","filter":{"assignedTo":["a"]}}',
      '{"type":"subscribe","id":"s","view":"v","filter":{"assignedTo":{"eq":"a"}}}',
      '{"type":"subscribe","id":"s","view":"v","filter":{"":"a"}}',
      '{"type":"subscribe","id":"s","view":"v","filter":["a"]}',
      '{"type":"subscribe","id":"s","view":"v","key":{"taskId":"a"}}',
    ]) {
      expect(parseClientMessage(text).ok, text).toBe(false);
    }
  });

  it('names the subscription only when its id is a valid one', () => {
    for (const text of ['{"type":"subscribe","id":"","view":"v"}', `{"type":"subscribe","id":"${'x'.repeat(65)}","view":"v"}`, '{"type":"subscribe","id":7,"view":"v"}']) {
      const r = parseClientMessage(text);
      expect(r.ok).toBe(false);
      expect(r, text).not.toHaveProperty('sub');
    }
    expect(parseClientMessage('{"type":"subscribe","id":"ok","view":"v","limit":0}')).toMatchObject({ ok: false, sub: 'ok' });
  });

  it('says what is wrong: not JSON, not an object, an unknown type, the schema of the type sent', () => {
    expect(parseClientMessage('nope')).toMatchObject({ ok: false, error: expect.stringMatching(/^not JSON/) });
    expect(parseClientMessage('[1]')).toEqual({ ok: false, error: 'a message is a JSON object' });
    expect(parseClientMessage('null')).toEqual({ ok: false, error: 'a message is a JSON object' });
    expect(parseClientMessage('{"type":"hello"}')).toEqual({ ok: false, error: 'type: must be one of subscribe, unsubscribe, ping' });
    expect(parseClientMessage('{"type":"subscribe","id":"s","aggregate":"task"}')).toMatchObject({ ok: false, error: expect.stringContaining('aggregateId') });
    expect(parseClientMessage('{"type":"subscribe","id":"s","view":"v","key":"k","filter":{"a":"b"}}')).toMatchObject({ ok: false, error: expect.stringContaining('either key or filter') });
  });

  it('accepts the messages of the protocol as sent, names such as "__proto__" as plain strings', () => {
    expect(parseClientMessage('{"type":"subscribe","id":"b","view":"task_list_view","filter":{"assignedTo":"CC1","status":"pending"},"after":3,"limit":10}')).toEqual({
      ok: true,
      message: { type: 'subscribe', id: 'b', view: 'task_list_view', filter: { assignedTo: 'CC1', status: 'pending' }, after: 3, limit: 10 },
    });
    expect(parseClientMessage('{"type":"subscribe","id":"__proto__","view":"constructor","key":"prototype"}')).toEqual({
      ok: true,
      message: { type: 'subscribe', id: '__proto__', view: 'constructor', key: 'prototype' },
    });
    expect(parseClientMessage('{"type":"subscribe","id":"a","aggregate":"task","aggregateId":"t-1","afterVersion":2}').ok).toBe(true);
    expect(parseClientMessage('{"type":"unsubscribe","id":"a"}').ok).toBe(true);
    expect(parseClientMessage('{"type":"ping"}').ok).toBe(true);
  });
});
