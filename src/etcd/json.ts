/**
 * The JSON of etcd's gateway, both ways, over our protobufjs types.
 *
 * Reading follows what etcd 3.4's gateway does with a request body, because clients see its
 * error texts: Go's encoding/json reads one JSON value (its syntax errors, word for word), then
 * golang/protobuf 1.3's jsonpb maps it onto the message: fields by proto name or lowerCamel JSON
 * name, unknown fields ignored, int64 as number or string, bytes as padded standard base64
 * (Go's decoder, its error offsets), enums by name or number. The result has the shape protobufjs
 * decoding gives (int64 as number or {low, high}, bytes as Buffer, enums as numbers), so the
 * services cannot tell the gateway from gRPC.
 *
 * Writing is proto3 JSON as jsonpb writes it with OrigName: proto field names, zero values left
 * out, int64 as strings, bytes as base64, enums by name, strings escaped as Go's encoding/json
 * does (HTML characters as \u003c, ...).
 */
import type * as Protobuf from 'protobufjs';

/** An error whose message is the text Go's encoding/json or jsonpb would give. */
export class JsonInputError extends Error {}

/** A request body that ends inside a JSON value (a stream reader waits for more). */
export class JsonEofError extends JsonInputError {}

const isType = (rt: Protobuf.Type | Protobuf.Enum | null): rt is Protobuf.Type =>
  rt !== null && 'fields' in rt;

// --- reading JSON the way Go's encoding/json does ---------------------------------------------

/** A JSON string: its decoded value and its raw bytes between the quotes (jsonpb looks at both). */
export class JStr {
  constructor(
    readonly value: string,
    readonly raw: Buffer,
  ) {}
}

/** A JSON number, kept as its literal text. */
export class JNum {
  constructor(readonly raw: string) {}
}

export type JNode = null | boolean | JStr | JNum | JNode[] | Map<string, JNode>;

/** Go's json maxNestingDepth. */
const MAX_DEPTH = 10000;

/** Go's quoteChar: how a byte is shown in a syntax error. */
function quoteChar(c: number): string {
  if (c === 0x27) return `'\\''`;
  if (c === 0x22) return `'"'`;
  const short: Record<number, string> = {
    7: '\\a',
    8: '\\b',
    9: '\\t',
    10: '\\n',
    11: '\\v',
    12: '\\f',
    13: '\\r',
  };
  if (short[c]) return `'${short[c]}'`;
  if (c === 0x5c) return `'\\\\'`;
  if (c < 0x20 || c === 0x7f) return `'\\x${c.toString(16).padStart(2, '0')}'`;
  // A byte >= 0x80 is shown as the rune of that value (Go's string(c)), escaped when not printable.
  if ((c >= 0x80 && c <= 0xa0) || c === 0xad) return `'\\u${c.toString(16).padStart(4, '0')}'`;
  return `'${String.fromCharCode(c)}'`;
}

function syntax(c: number, context: string): JsonInputError {
  return new JsonInputError(`invalid character ${quoteChar(c)} ${context}`);
}

const isSpace = (c: number) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
const isDigit = (c: number) => c >= 0x30 && c <= 0x39;
const isHex = (c: number) => isDigit(c) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46);

/** What to say when the input ends inside a number or literal (the context), or elsewhere. */
class Eof extends Error {
  constructor(readonly context?: string) {
    super('eof');
  }
}

/**
 * Read one JSON value from `b` at `pos`.
 * - `stream` (Go's json.Decoder, a request body): only whitespace left -> null; the input may go on
 *   after the value (a stream of requests); an end inside the value is "unexpected EOF".
 * - `whole` (Go's json.Unmarshal): the value must be all of `b`.
 */
export function readJson(
  b: Buffer,
  pos: number,
  mode: 'stream' | 'whole',
): { node: JNode; end: number } | null {
  let i = pos;
  while (i < b.length && isSpace(b[i]!)) i++;
  if (i === b.length) {
    if (mode === 'stream') return null;
    throw new JsonInputError('unexpected end of JSON input');
  }
  try {
    const r = parse(b, i);
    i = r.end;
    if (mode === 'whole') {
      while (i < b.length && isSpace(b[i]!)) i++;
      if (i < b.length) throw syntax(b[i]!, 'after top-level value');
    }
    return r;
  } catch (e) {
    if (!(e instanceof Eof)) throw e;
    if (mode === 'stream') throw new JsonEofError('unexpected EOF');
    // json.Unmarshal feeds a space at the end: inside a number or literal that is the error.
    throw e.context ? syntax(0x20, e.context) : new JsonInputError('unexpected end of JSON input');
  }
}

type Frame = { map: Map<string, JNode>; key: string | undefined } | { items: JNode[] };

/** An iterative parser (nesting is bounded by MAX_DEPTH, not by the JavaScript stack). */
function parse(b: Buffer, start: number): { node: JNode; end: number } {
  const stack: Frame[] = [];
  let i = start;
  // 'value': a value must come; 'valueOrEnd': after '['; 'keyOrEnd': after '{'; 'key': after
  // ',' in an object; 'colon': after a key; 'after': after a value inside a container.
  let state: 'value' | 'valueOrEnd' | 'keyOrEnd' | 'key' | 'colon' | 'after' = 'value';
  const at = (j: number) => {
    if (j >= b.length) throw new Eof();
    return b[j]!;
  };
  for (;;) {
    const c = at(i);
    if (isSpace(c)) {
      i++;
      continue;
    }
    let node: JNode | undefined;
    let closed = false;
    switch (state) {
      case 'valueOrEnd':
      case 'value': {
        if (state === 'valueOrEnd' && c === 0x5d) {
          closed = true;
          i++;
          break;
        }
        if (c === 0x7b || c === 0x5b) {
          if (stack.length + 1 > MAX_DEPTH) throw syntax(c, 'exceeded max depth');
          stack.push(c === 0x7b ? { map: new Map(), key: undefined } : { items: [] });
          state = c === 0x7b ? 'keyOrEnd' : 'valueOrEnd';
          i++;
          continue;
        }
        if (c === 0x22) {
          const s = readString(b, i);
          node = s.str;
          i = s.end;
        } else if (c === 0x2d || isDigit(c)) {
          const n = readNumber(b, i);
          node = new JNum(b.toString('latin1', i, n));
          i = n;
        } else if (c === 0x74 || c === 0x66 || c === 0x6e) {
          const word = c === 0x74 ? 'true' : c === 0x66 ? 'false' : 'null';
          for (let k = 1; k < word.length; k++) {
            const ch = b[i + k];
            if (ch === undefined) throw new Eof(`in literal ${word} (expecting '${word[k]}')`);
            if (ch !== word.charCodeAt(k)) throw syntax(ch, `in literal ${word} (expecting '${word[k]}')`);
          }
          node = c === 0x74 ? true : c === 0x66 ? false : null;
          i += word.length;
        } else {
          throw syntax(c, 'looking for beginning of value');
        }
        break;
      }
      case 'keyOrEnd':
      case 'key': {
        if (state === 'keyOrEnd' && c === 0x7d) {
          closed = true;
          i++;
          break;
        }
        if (c !== 0x22) throw syntax(c, 'looking for beginning of object key string');
        const s = readString(b, i);
        (stack[stack.length - 1] as { key: string | undefined }).key = s.str.value;
        i = s.end;
        state = 'colon';
        continue;
      }
      case 'colon':
        if (c !== 0x3a) throw syntax(c, 'after object key');
        i++;
        state = 'value';
        continue;
      case 'after': {
        const top = stack[stack.length - 1]!;
        const isObj = 'map' in top;
        if (c === 0x2c) {
          i++;
          state = isObj ? 'key' : 'value';
          continue;
        }
        if (c === (isObj ? 0x7d : 0x5d)) {
          closed = true;
          i++;
          break;
        }
        throw syntax(c, isObj ? 'after object key:value pair' : 'after array element');
      }
    }
    if (closed) {
      const f = stack.pop()!;
      node = 'map' in f ? f.map : f.items;
    }
    if (stack.length === 0) return { node: node as JNode, end: i };
    const top = stack[stack.length - 1]!;
    if ('map' in top) top.map.set(top.key!, node as JNode);
    else top.items.push(node as JNode);
    state = 'after';
  }
}

function readNumber(b: Buffer, i: number): number {
  let j = i;
  if (b[j] === 0x2d) j++;
  if (j >= b.length) throw new Eof('in numeric literal');
  if (b[j] === 0x30) j++;
  else if (isDigit(b[j]!)) while (j < b.length && isDigit(b[j]!)) j++;
  else throw syntax(b[j]!, 'in numeric literal');
  if (b[j] === 0x2e) {
    j++;
    if (j >= b.length) throw new Eof('after decimal point in numeric literal');
    if (!isDigit(b[j]!)) throw syntax(b[j]!, 'after decimal point in numeric literal');
    while (j < b.length && isDigit(b[j]!)) j++;
  }
  if (b[j] === 0x65 || b[j] === 0x45) {
    j++;
    if (b[j] === 0x2b || b[j] === 0x2d) j++;
    if (j >= b.length) throw new Eof('in exponent of numeric literal');
    if (!isDigit(b[j]!)) throw syntax(b[j]!, 'in exponent of numeric literal');
    while (j < b.length && isDigit(b[j]!)) j++;
  }
  return j;
}

const ESCAPES: Record<number, string> = {
  98: '\b',
  102: '\f',
  110: '\n',
  114: '\r',
  116: '\t',
  92: '\\',
  47: '/',
  34: '"',
};

function readString(b: Buffer, i: number): { str: JStr; end: number } {
  let j = i + 1;
  let escaped = false;
  for (;;) {
    if (j >= b.length) throw new Eof();
    const c = b[j]!;
    if (c === 0x22) break;
    if (c === 0x5c) {
      escaped = true;
      j++;
      if (j >= b.length) throw new Eof();
      const e = b[j]!;
      if (e === 0x75) {
        for (let k = 1; k <= 4; k++) {
          if (j + k >= b.length) throw new Eof();
          if (!isHex(b[j + k]!)) throw syntax(b[j + k]!, 'in \\u hexadecimal character escape');
        }
        j += 5;
        continue;
      }
      if (ESCAPES[e] === undefined) throw syntax(e, 'in string escape code');
      j++;
      continue;
    }
    if (c < 0x20) throw syntax(c, 'in string literal');
    j++;
  }
  const raw = b.subarray(i + 1, j);
  return { str: new JStr(escaped ? unescapeString(raw) : raw.toString('utf8'), raw), end: j + 1 };
}

/** Decode a validated string body with escapes; a lone surrogate becomes U+FFFD (as Go does). */
function unescapeString(raw: Buffer): string {
  let out = '';
  let from = 0;
  let k = 0;
  while (k < raw.length) {
    if (raw[k] !== 0x5c) {
      k++;
      continue;
    }
    out += raw.toString('utf8', from, k);
    const e = raw[k + 1]!;
    if (e !== 0x75) {
      out += ESCAPES[e];
      k += 2;
    } else {
      let u = Number.parseInt(raw.toString('latin1', k + 2, k + 6), 16);
      k += 6;
      if (u >= 0xd800 && u < 0xdc00 && raw[k] === 0x5c && raw[k + 1] === 0x75) {
        const lo = Number.parseInt(raw.toString('latin1', k + 2, k + 6), 16);
        if (lo >= 0xdc00 && lo < 0xe000) {
          out += String.fromCharCode(u, lo);
          k += 6;
          from = k;
          continue;
        }
      }
      if (u >= 0xd800 && u < 0xe000) u = 0xfffd;
      out += String.fromCharCode(u);
    }
    from = k;
  }
  return out + raw.toString('utf8', from);
}

// --- Go's base64.StdEncoding.Decode -----------------------------------------------------------

const B64 = new Int16Array(256).fill(-1);
for (let k = 0; k < 64; k++)
  B64['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.charCodeAt(k)] = k;

/**
 * Padded standard base64 as Go decodes it: CR and LF are skipped anywhere, padding is required,
 * and an error names the byte offset Go names ("illegal base64 data at input byte N").
 */
export function goBase64(src: Buffer): Buffer {
  const out = Buffer.allocUnsafe(Math.floor(src.length / 4) * 3 + 3);
  let n = 0;
  let si = 0;
  const corrupt = (at: number) => new JsonInputError(`illegal base64 data at input byte ${at}`);
  const nl = (c: number | undefined) => c === 0x0a || c === 0x0d;
  while (si < src.length) {
    const q = [0, 0, 0, 0];
    let len = 4;
    let trailing: number | undefined;
    let j = 0;
    for (; j < 4; j++) {
      if (si === src.length) {
        if (j === 0) return out.subarray(0, n);
        throw corrupt(si - j);
      }
      const c = src[si++]!;
      const v = B64[c]!;
      if (v >= 0) {
        q[j] = v;
        continue;
      }
      if (nl(c)) {
        j--;
        continue;
      }
      if (c !== 0x3d || j < 2) throw corrupt(si - 1);
      if (j === 2) {
        // "==": the second '=' may follow after line breaks.
        while (si < src.length && nl(src[si])) si++;
        if (si === src.length) throw corrupt(src.length);
        if (src[si] !== 0x3d) throw corrupt(si - 1);
        si++;
      }
      while (si < src.length && nl(src[si])) si++;
      if (si < src.length) trailing = si;
      len = j;
      break;
    }
    const v = (q[0]! << 18) | (q[1]! << 12) | (q[2]! << 6) | q[3]!;
    if (len >= 2) out[n++] = (v >> 16) & 0xff;
    if (len >= 3) out[n++] = (v >> 8) & 0xff;
    if (len === 4) out[n++] = v & 0xff;
    if (trailing !== undefined) throw corrupt(trailing);
    if (len < 4) break;
  }
  return out.subarray(0, n);
}

// --- jsonpb: a JSON tree onto a protobufjs message --------------------------------------------

function kindOf(node: JNode): string {
  if (node === null) return 'null';
  if (typeof node === 'boolean') return 'bool';
  if (node instanceof JStr) return 'string';
  if (node instanceof JNum) return 'number';
  if (Array.isArray(node)) return 'array';
  return 'object';
}

function typeError(what: string, goType: string): JsonInputError {
  return new JsonInputError(`json: cannot unmarshal ${what} into Go value of type ${goType}`);
}

/** Go's name of a generated enum type: package, then the nesting joined with '_'. */
function goEnumName(e: Protobuf.Enum): string {
  const path: string[] = [e.name];
  let p = e.parent;
  while (p && 'fields' in p) {
    path.unshift(p.name);
    p = p.parent;
  }
  const pkg = p?.fullName.replace(/^\./, '') ?? '';
  return `${pkg}.${path.join('_')}`;
}

/** protoc's JSON name of a field: lowerCamelCase of the proto name. */
function jsonName(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_m, ch: string) => ch.toUpperCase());
}

/** Go's %q of a byte string (as jsonpb quotes an unknown enum name). */
function goQuote(raw: Buffer): string {
  return JSON.stringify(raw.toString('utf8'));
}

const INT_TYPES: Record<string, { go: string; min: bigint; max: bigint; long: boolean }> = {
  int64: { go: 'int64', min: -(2n ** 63n), max: 2n ** 63n - 1n, long: true },
  sint64: { go: 'int64', min: -(2n ** 63n), max: 2n ** 63n - 1n, long: true },
  sfixed64: { go: 'int64', min: -(2n ** 63n), max: 2n ** 63n - 1n, long: true },
  uint64: { go: 'uint64', min: 0n, max: 2n ** 64n - 1n, long: true },
  fixed64: { go: 'uint64', min: 0n, max: 2n ** 64n - 1n, long: true },
  int32: { go: 'int32', min: -(2n ** 31n), max: 2n ** 31n - 1n, long: false },
  sint32: { go: 'int32', min: -(2n ** 31n), max: 2n ** 31n - 1n, long: false },
  sfixed32: { go: 'int32', min: -(2n ** 31n), max: 2n ** 31n - 1n, long: false },
  uint32: { go: 'uint32', min: 0n, max: 2n ** 32n - 1n, long: false },
  fixed32: { go: 'uint32', min: 0n, max: 2n ** 32n - 1n, long: false },
};

/** strconv.ParseInt/ParseUint of a JSON number literal into `min..max`, or undefined. */
function parseInteger(raw: string, min: bigint, max: bigint): bigint | undefined {
  if (!/^-?\d+$/.test(raw)) return undefined;
  const v = BigInt(raw);
  return v < min || v > max ? undefined : v;
}

/** An integer as protobufjs decoding gives it: a number while exact, else a Long-like pair. */
function wireInteger(v: bigint): number | { low: number; high: number; unsigned: boolean } {
  if (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  return {
    low: Number(BigInt.asIntN(32, v)),
    high: Number(BigInt.asIntN(32, v >> 32n)),
    unsigned: v > 0n,
  };
}

function integer(node: JNode, type: string, goType: string): unknown {
  const t = INT_TYPES[type]!;
  let n = node;
  // jsonpb strips the quotes of a quoted number and parses what is inside as JSON.
  if (n instanceof JStr) n = readJson(n.raw, 0, 'whole')!.node;
  if (n === null) return 0;
  if (!(n instanceof JNum)) throw typeError(kindOf(n), goType);
  const v = parseInteger(n.raw, t.min, t.max);
  if (v === undefined) throw typeError(`number ${n.raw}`, goType);
  return t.long ? wireInteger(v) : Number(v);
}

function bytesOf(node: JNode): Buffer {
  if (node instanceof JStr) return goBase64(Buffer.from(node.value, 'utf8'));
  if (Array.isArray(node)) {
    // Go's json decodes an array of numbers into []byte element by element.
    const out = Buffer.alloc(node.length);
    node.forEach((x, k) => {
      if (x === null) return;
      if (!(x instanceof JNum)) throw typeError(kindOf(x), 'uint8');
      const v = parseInteger(x.raw, 0n, 255n);
      if (v === undefined) throw typeError(`number ${x.raw}`, 'uint8');
      out[k] = Number(v);
    });
    return out;
  }
  throw typeError(kindOf(node), '[]uint8');
}

function singular(field: Protobuf.Field, node: JNode): unknown {
  const rt = field.resolvedType;
  if (isType(rt)) return toMessage(rt, node);
  if (rt) {
    const e = rt as Protobuf.Enum;
    if (node instanceof JStr) {
      const v = e.values[node.raw.toString('utf8')];
      if (v === undefined)
        throw new JsonInputError(`unknown value ${goQuote(node.raw)} for enum ${goEnumName(e)}`);
      return v;
    }
    if (node === null) return 0;
    if (!(node instanceof JNum)) throw typeError(kindOf(node), goEnumName(e));
    const v = parseInteger(node.raw, -(2n ** 31n), 2n ** 31n - 1n);
    if (v === undefined) throw typeError(`number ${node.raw}`, goEnumName(e));
    return Number(v);
  }
  switch (field.type) {
    case 'bool':
      if (typeof node !== 'boolean') throw typeError(kindOf(node), 'bool');
      return node;
    case 'string':
      if (!(node instanceof JStr)) throw typeError(kindOf(node), 'string');
      return node.value;
    case 'bytes':
      return bytesOf(node);
    default:
      if (INT_TYPES[field.type]) return integer(node, field.type, INT_TYPES[field.type]!.go);
      throw new JsonInputError(`edgekeeper: no JSON mapping for field type ${field.type}`);
  }
}

function fieldValue(field: Protobuf.Field, node: JNode): unknown {
  if (!field.repeated) return singular(field, node);
  const rt = field.resolvedType;
  if (node instanceof JStr && rt && !isType(rt)) {
    // jsonpb's enum branch comes first and cannot store into a slice.
    const e = rt as Protobuf.Enum;
    if (e.values[node.raw.toString('utf8')] === undefined)
      throw new JsonInputError(`unknown value ${goQuote(node.raw)} for enum ${goEnumName(e)}`);
    throw new JsonInputError(`invalid target "slice" for enum ${goEnumName(e)}`);
  }
  if (!Array.isArray(node)) throw typeError(kindOf(node), '[]json.RawMessage');
  // A null element is the element's zero value (an empty message for messages), as in Go.
  return node.map((x) => (x !== null ? singular(field, x) : isType(rt) ? new rt.ctor() : field.typeDefault));
}

/** jsonpb's unmarshal of `node` into a new message of `type` (top-level null: an empty message). */
export function toMessage(type: Protobuf.Type, node: JNode): Record<string, unknown> {
  const msg = new type.ctor() as unknown as Record<string, unknown>;
  if (node === null) return msg;
  if (!(node instanceof Map)) throw typeError(kindOf(node), 'map[string]json.RawMessage');
  const rest = new Map(node);
  const take = (f: Protobuf.Field): JNode | undefined => {
    let raw: JNode | undefined;
    if (rest.has(f.name)) {
      raw = rest.get(f.name);
      rest.delete(f.name);
    }
    const camel = jsonName(f.name);
    if (camel !== f.name && rest.has(camel)) {
      raw = rest.get(camel);
      rest.delete(camel);
    }
    return raw;
  };
  // Plain fields in declaration order, then oneof members (jsonpb's order, which decides which
  // error is reported first).
  for (const pass of [false, true]) {
    for (const f of type.fieldsArray) {
      if (!!f.partOf !== pass) continue;
      const raw = take(f);
      if (raw === undefined || raw === null) continue;
      msg[f.name] = fieldValue(f, raw);
    }
  }
  return msg;
}

// --- writing proto3 JSON as jsonpb does -------------------------------------------------------

/** Go's encoding/json string: HTML-safe, U+2028/2029 escaped, lone surrogates as U+FFFD. */
export function goString(s: string): string {
  let out = '"';
  let from = 0;
  for (let k = 0; k < s.length; k++) {
    const c = s.charCodeAt(k);
    let esc: string | undefined;
    if (c < 0x20 || c === 0x22 || c === 0x5c || c === 0x3c || c === 0x3e || c === 0x26) {
      esc =
        c === 0x22
          ? '\\"'
          : c === 0x5c
            ? '\\\\'
            : c === 0x0a
              ? '\\n'
              : c === 0x0d
                ? '\\r'
                : c === 0x09
                  ? '\\t'
                  : `\\u00${c.toString(16).padStart(2, '0')}`;
    } else if (c === 0x2028 || c === 0x2029) {
      esc = `\\u${c.toString(16)}`;
    } else if (c >= 0xd800 && c < 0xe000) {
      const lo = s.charCodeAt(k + 1);
      if (c < 0xdc00 && lo >= 0xdc00 && lo < 0xe000) {
        k++;
        continue;
      }
      esc = '\ufffd';
    }
    if (esc === undefined) continue;
    out += s.slice(from, k) + esc;
    from = k + 1;
  }
  return `${out}${s.slice(from)}"`;
}

/** A 64-bit integer in any of the shapes our responses hold it, as decimal text. */
function int64Text(v: unknown, unsigned: boolean): string {
  let b: bigint;
  if (typeof v === 'bigint') b = v;
  else if (typeof v === 'number') b = BigInt(Math.trunc(v));
  else {
    const l = v as { low: number; high: number };
    b = (BigInt(l.high) << 32n) | BigInt(l.low >>> 0);
  }
  return (unsigned ? BigInt.asUintN(64, b) : BigInt.asIntN(64, b)).toString();
}

function isZero(v: unknown): boolean {
  if (v === 0 || v === false || v === '' || v === 0n) return true;
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return v.length === 0;
  if (typeof v === 'object' && v !== null && 'low' in v && 'high' in v)
    return (v as { low: number }).low === 0 && (v as { high: number }).high === 0;
  return false;
}

function valueJson(field: Protobuf.Field, v: unknown): string {
  const rt = field.resolvedType;
  if (isType(rt)) return messageJson(rt, v as Record<string, unknown>);
  if (rt) {
    const name = (rt as Protobuf.Enum).valuesById[v as number];
    return name === undefined ? String(v) : goString(name);
  }
  switch (field.type) {
    case 'int64':
    case 'sint64':
    case 'sfixed64':
      return `"${int64Text(v, false)}"`;
    case 'uint64':
    case 'fixed64':
      return `"${int64Text(v, true)}"`;
    case 'bool':
      return v ? 'true' : 'false';
    case 'string':
      return goString(String(v));
    case 'bytes':
      return `"${Buffer.from(v as Uint8Array).toString('base64')}"`;
    default:
      return String(Number(v));
  }
}

/** A response object (the shape our services return) as jsonpb writes it. */
export function messageJson(type: Protobuf.Type, obj: Record<string, unknown>): string {
  let out = '{';
  for (const f of type.fieldsArray) {
    const v = obj[f.name];
    if (v === undefined || v === null) continue;
    let json: string;
    if (f.repeated) {
      const arr = v as unknown[];
      if (arr.length === 0) continue;
      json = `[${arr.map((x) => valueJson(f, x)).join(',')}]`;
    } else {
      // A message is written whenever present (even empty); a scalar only when not zero.
      if (!isType(f.resolvedType) && isZero(v)) continue;
      json = valueJson(f, v);
    }
    out += `${out.length > 1 ? ',' : ''}"${f.name}":${json}`;
  }
  return `${out}}`;
}
