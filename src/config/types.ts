/**
 * Config fields are declared per part as data, so `src/config/` validates the whole file once
 * with one schema and reports every problem with its path ("Expected `mqtt.port` to be
 * 1..65535, got 70000"). A part exports a `ConfigSection` and reads its frozen values back as a
 * plain object typed by its own interface.
 */
export type FieldSpec =
  | { type: 'string'; default?: string; enum?: readonly string[]; optional?: boolean; doc: string }
  | {
      type: 'integer' | 'number';
      default?: number;
      min?: number;
      max?: number;
      optional?: boolean;
      doc: string;
    }
  | { type: 'boolean'; default?: boolean; doc: string }
  | { type: 'string[]'; default?: readonly string[]; doc: string }
  /** "500ms", "10s", "5m", "1h", "7d" or a number of milliseconds; the value is milliseconds. */
  | { type: 'duration'; default?: number; min?: number; max?: number; optional?: boolean; doc: string }
  /** "HOST:PORT" (IPv6 hosts in brackets, port 0..65535); the value stays the string. */
  | { type: 'hostport'; default?: string; optional?: boolean; doc: string }
  /** "64KiB", "2GiB", or a number of bytes; the value is bytes. */
  | { type: 'bytes'; default?: number; min?: number; max?: number; optional?: boolean; doc: string }
  /** A key that was renamed: using it is an error that names the new key. */
  | { type: 'renamed'; to: string; doc?: string };

export interface ConfigSection {
  /** Top-level key in the config file, e.g. "mqtt". */
  name: string;
  doc: string;
  fields: Record<string, FieldSpec>;
  /**
   * Checks that involve more than one field or a format the field types cannot express. Runs
   * after every field of the section validated; returns problems, each naming its key path
   * ("Expected `store.compactionRetention` to be ..."). Optional.
   */
  check?(values: Readonly<Record<string, unknown>>): string[];
}
