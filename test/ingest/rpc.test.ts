/**
 * Calls and notifications between the main thread and the ingest thread, over a real
 * MessageChannel: answers, errors, order, and what happens when the other side is gone.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MessageChannel } from 'node:worker_threads';
import { Peer } from '../../src/ingest/rpc.js';

describe('ingest thread calls', () => {
  it('answers calls both ways, passes errors back by message, keeps notifications in order', async () => {
    const { port1, port2 } = new MessageChannel();
    const seen: number[] = [];
    const a = new Peer(port1, {
      twice: (x: number) => x * 2,
      later: async (x: { s: string }) => `${x.s}!`,
    });
    const b = new Peer(port2, {
      fails: () => {
        throw new Error('no such device');
      },
      note: (n: number) => seen.push(n),
      echo: (x: Uint8Array) => x,
    });
    assert.equal(await b.call<number>('twice', 21), 42);
    assert.equal(await b.call<string>('later', { s: 'ok' }), 'ok!');
    await assert.rejects(a.call('fails'), /no such device/);
    for (let i = 0; i < 100; i++) a.notify('note', i);
    const bytes = await a.call<Uint8Array>('echo', Buffer.from('payload'));
    assert.equal(Buffer.from(bytes).toString(), 'payload');
    assert.deepEqual(
      seen,
      Array.from({ length: 100 }, (_, i) => i),
      'notifications arrive in order, before a later call',
    );
    port1.close();
  });

  it('fails waiting and later calls once the other side is gone', async () => {
    const { port1, port2 } = new MessageChannel();
    const a = new Peer(port1, {});
    // the other side never answers
    new Peer(port2, { hang: () => new Promise(() => undefined) });
    const waiting = a.call('hang');
    await new Promise((r) => setTimeout(r, 20));
    a.fail(new Error('ingest thread exited with code 1'));
    await assert.rejects(waiting, /exited with code 1/);
    await assert.rejects(a.call('hang'), /exited with code 1/);
    port1.close();
  });
});
