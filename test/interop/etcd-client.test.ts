/**
 * Proves that the etcd3 npm client (a real client no one here wrote) works against edgekeeper:
 * KV with its error classes, a watch that survives the server going away and coming back
 * (resuming from its last revision, nothing lost or repeated), leases kept alive by the client,
 * its Lock, its Election (campaign, observe, resign) and its STM under contention.
 * Needs: nothing beyond npm dependencies (etcd3 is a devDependency).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Etcd3, EtcdLeaseInvalidError, EtcdLockFailedError } from 'etcd3';
import { startEtcdServer } from '../../src/etcd/index.js';
import { type Edge, startEdge, waitFor } from '../etcd/helpers.js';

let edge: Edge;
let client: Etcd3;

before(async () => {
  edge = await startEdge();
  client = new Etcd3({ hosts: `http://${edge.endpoint}` });
});
after(async () => {
  client?.close();
  await edge?.close();
});

describe('etcd3 npm client against edgekeeper', () => {
  it('KV: put, get, prefix ranges, delete, conditional txn, errors', async () => {
    await client.put('/kv/a').value('1');
    await client.put('/kv/b').value('2');
    assert.equal(await client.get('/kv/a').string(), '1');
    assert.deepEqual(await client.getAll().prefix('/kv/').strings(), { '/kv/a': '1', '/kv/b': '2' });
    assert.equal(await client.getAll().prefix('/kv/').count(), 2);
    const r = await client
      .if('/kv/a', 'Value', '==', '1')
      .then(client.put('/kv/c').value('3'))
      .else(client.put('/kv/c').value('x'))
      .commit();
    assert.equal(r.succeeded, true);
    assert.equal(await client.get('/kv/c').string(), '3');
    await client.delete().key('/kv/a');
    assert.equal(await client.get('/kv/a').string(), null);
    // A compacted revision: etcd3 surfaces etcd's message.
    const rev = Number((await client.put('/kv/r').value('1').exec()).header.revision);
    await client.put('/kv/r').value('2');
    await client.put('/kv/r').value('3');
    await client.get('/kv/r').exec(); // warm
    await edge.store.compact(rev + 1);
    await assert.rejects(client.get('/kv/r').revision(rev).string(), /required revision has been compacted/);
    await assert.rejects(
      client
        .lease(10)
        .put('/kv/l')
        .value('x')
        .exec()
        .then(() => client.put('/kv/y').value('y').lease('123')),
      (err: Error) => {
        return err instanceof EtcdLeaseInvalidError || /requested lease not found/.test(err.message);
      },
    );
  });

  it('watch survives a server restart and resumes without loss or repeats', async () => {
    const seen: string[] = [];
    const w = await client.watch().prefix('/wr/').create();
    w.on('put', (kv) => seen.push(kv.value.toString()));
    await client.put('/wr/k').value('before');
    await waitFor(() => seen.length === 1, 'first event');
    // Take the API away; write while it is down; bring it back on the same port.
    const port = edge.server.port;
    await edge.server.close();
    await edge.store.put({ key: Buffer.from('/wr/k'), value: Buffer.from('while-down') });
    edge.server = await startEtcdServer(edge.store, { listen: `127.0.0.1:${port}`, stateDir: edge.dir });
    await client.put('/wr/k').value('after');
    await waitFor(() => seen.length >= 3, 'events after reconnect', 20_000);
    assert.deepEqual(seen, ['before', 'while-down', 'after']);
    await w.cancel();
  });

  it('lease with keepalive outlives its TTL; revoke deletes its keys', async () => {
    const lease = client.lease(2);
    let kept = 0;
    lease.on('keepaliveSucceeded', () => kept++);
    await lease.put('/lease/k').value('v');
    await waitFor(() => kept >= 3, 'three keepalives', 15_000);
    // Three keepalives at TTL/3 intervals: the 2 s TTL has passed at least once.
    assert.equal(await client.get('/lease/k').string(), 'v');
    await lease.revoke();
    assert.equal(await client.get('/lease/k').string(), null);
  });

  it('Lock: a second holder is refused until the first releases', async () => {
    const l1 = await client.lock('mutex').ttl(10).acquire();
    await assert.rejects(client.lock('mutex').ttl(10).acquire(), EtcdLockFailedError);
    await l1.release();
    const l2 = await client.lock('mutex').ttl(10).acquire();
    await l2.release();
  });

  it('Election: campaign, observe, resign hands over leadership', async () => {
    const election = client.election('elect', 5);
    const observer = await election.observe();
    const changes: (string | undefined)[] = [];
    observer.on('change', (v) => changes.push(v));
    const a = election.campaign('alpha');
    await new Promise<void>((resolve, reject) => {
      a.on('elected', () => resolve());
      a.on('error', reject);
    });
    const b = client.election('elect', 5).campaign('beta');
    let bElected = false;
    b.on('elected', () => {
      bElected = true;
    });
    b.on('error', () => {});
    await waitFor(() => changes.includes('alpha'), 'observer sees alpha');
    assert.equal(await election.leader(), 'alpha');
    assert.equal(bElected, false);
    await a.resign();
    await waitFor(() => bElected, 'beta elected');
    await waitFor(() => changes.includes('beta'), 'observer sees beta');
    assert.equal(await election.leader(), 'beta');
    await b.resign();
    await observer.cancel();
  });

  it('STM: concurrent read-modify-write transactions serialise', async () => {
    await client.put('/stm/n').value('0');
    const incr = () =>
      client.stm({ retries: 50 }).transact(async (tx) => {
        const n = Number(await tx.get('/stm/n').string());
        await tx.put('/stm/n').value(String(n + 1));
      });
    await Promise.all(Array.from({ length: 8 }, incr));
    assert.equal(await client.get('/stm/n').string(), '8');
  });
});
