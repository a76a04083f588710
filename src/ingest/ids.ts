/**
 * Device ids and topics. An id becomes an MQTT topic level and an etcd key segment, so it must
 * never contain `/`, `+`, `#`, control characters or anything a shell or a URL would mangle.
 */
export const DEVICE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

export function validDeviceId(id: unknown): id is string {
  return typeof id === 'string' && DEVICE_ID_RE.test(id);
}

/** Printable, bounded form of untrusted text for logs and the dead-letter table. */
export function sanitize(s: string, max = 128): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping control characters is the point
  const clean = s.replace(/[\u0000-\u001f\u007f]/g, '?');
  return clean.length > max ? `${clean.slice(0, max)}...` : clean;
}

export const TOPIC_PREFIX = 'edgekeeper/v1/devices/';
export type TopicKind = 'report' | 'status' | 'command';

export function reportTopic(id: string): string {
  return `${TOPIC_PREFIX}${id}/report`;
}
export function statusTopic(id: string): string {
  return `${TOPIC_PREFIX}${id}/status`;
}
export function commandTopic(id: string): string {
  return `${TOPIC_PREFIX}${id}/command`;
}

export type ParsedTopic =
  | { ok: true; device: string; kind: TopicKind }
  | { ok: false; reason: 'bad_topic' | 'bad_device_id' };

/** `edgekeeper/v1/devices/<id>/<kind>`; anything else is refused. */
export function parseTopic(topic: string): ParsedTopic {
  if (!topic.startsWith(TOPIC_PREFIX)) return { ok: false, reason: 'bad_topic' };
  const rest = topic.slice(TOPIC_PREFIX.length);
  const slash = rest.lastIndexOf('/');
  if (slash <= 0) return { ok: false, reason: 'bad_topic' };
  const kind = rest.slice(slash + 1);
  if (kind !== 'report' && kind !== 'status' && kind !== 'command') return { ok: false, reason: 'bad_topic' };
  const device = rest.slice(0, slash);
  if (!validDeviceId(device)) return { ok: false, reason: 'bad_device_id' };
  return { ok: true, device, kind };
}

/** Command names share the device id charset: they are one etcd key segment. */
export const validCommandName = validDeviceId;

export const DEVICES_PREFIX = '/edgekeeper/devices/';
export const COMMANDS_PREFIX = '/edgekeeper/commands/';
