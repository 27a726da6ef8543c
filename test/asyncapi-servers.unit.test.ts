import { describe, expect, it } from 'vitest';
import { asyncApiServers, buildAsyncApi } from '../src/http/asyncapi.js';
import { aggregates } from '../actors/index.js';

describe('/asyncapi.json servers', () => {
  it('names the NATS server Strand uses, not a default', () => {
    const doc = buildAsyncApi(new Map(aggregates.map((a) => [a.name, a])), 'EVENTS', 'nats://127.0.0.1:4333');
    expect(doc['servers']).toEqual({ nats: { host: '127.0.0.1:4333', protocol: 'nats', description: expect.any(String) } });
  });

  it('lists every server of a comma-separated NATS_URL, without credentials', () => {
    expect(asyncApiServers('nats://alice:secret@n1:4222, n2:4223,tls://n3')).toEqual({
      nats: expect.objectContaining({ host: 'n1:4222' }),
      'nats-2': expect.objectContaining({ host: 'n2:4223' }),
      'nats-3': expect.objectContaining({ host: 'n3:4222' }),
    });
    expect(JSON.stringify(asyncApiServers('nats://alice:secret@n1:4222'))).not.toContain('secret');
  });

  it('falls back to a host variable when no URL is known', () => {
    expect(asyncApiServers(undefined)).toMatchObject({ nats: { host: '{host}', variables: { host: { default: 'localhost:4222' } } } });
  });
});
