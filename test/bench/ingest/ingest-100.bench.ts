import { runIngestBench } from './common.js';

/** 100 devices, QoS 1: aedes and mosquitto raw delivery vs durable ingest (see common.ts). */
export default async function run(): Promise<void> {
  await runIngestBench(100);
}
