/**
 * Time is injected: lease expiry, keepalives, retries and schedules take a Clock so tests can
 * drive time instead of sleeping. `systemClock` is the real one.
 */
export interface Timer {
  cancel(): void;
}

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Monotonic milliseconds, for measuring durations. */
  monotonic(): number;
  /** Run `fn` once after `ms`; the timer never keeps the process alive. */
  setTimeout(fn: () => void, ms: number): Timer;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref();
    return { cancel: () => clearTimeout(t) };
  },
};

/**
 * A clock that only moves when told to; for tests. `advance` moves both readings (time passes);
 * `step` moves the wall clock alone, as NTP or an operator does. Timers run on the monotonic
 * reading, as Node's do.
 */
export class ManualClock implements Clock {
  /** Monotonic milliseconds; the wall clock is `mono + offset`. */
  private t: number;
  private offset = 0;
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private nextId = 0;
  constructor(start = 1_700_000_000_000) {
    this.t = start;
  }
  now(): number {
    return this.t + this.offset;
  }
  monotonic(): number {
    return this.t;
  }
  /** Step the wall clock by `ms` (negative: back); no timer fires and monotonic time stays. */
  step(ms: number): void {
    this.offset += ms;
  }
  setTimeout(fn: () => void, ms: number): Timer {
    const id = this.nextId++;
    this.timers.push({ at: this.t + Math.max(0, ms), fn, id });
    return { cancel: () => (this.timers = this.timers.filter((x) => x.id !== id)) };
  }
  /** Timers waiting to fire (tests wait for a component to arm its next timer). */
  get pending(): number {
    return this.timers.length;
  }

  /** Move time forward, firing due timers in order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const next = this.timers[0];
      if (!next || next.at > end) break;
      this.timers.shift();
      this.t = next.at;
      next.fn();
    }
    this.t = end;
  }
}

/**
 * How far the wall clock is from the monotonic one; it changes only when the wall clock steps
 * (NTP slews move it by at most 0.5 ms per second).
 */
function wallOffset(clock: Clock): number {
  return clock.now() - clock.monotonic();
}

// A change of the offset beyond this between two looks is a step, not a slew (500 ppm at most).
const STEP_TOLERANCE_MS = 1000;

/**
 * Watches the wall clock for steps and answers "which wall times could a moment in the last
 * `ms` have been stamped with": with no step, [now - ms, now]; after a step of D it also covers
 * the old frame, [now - ms - D, now - D], until `ms` of monotonic time have passed.
 */
export class WallFrames {
  /** Offsets in force within the span, with the monotonic time each was last seen. */
  private frames: { offset: number; seen: number }[] = [];
  constructor(private readonly clock: Clock) {
    this.frames.push({ offset: wallOffset(clock), seen: clock.monotonic() });
  }

  /**
   * A wall time stamped before this process started (the last one stored): until `ms` of the
   * span have passed, the span also covers the `ms` before it, whatever the clock did meanwhile.
   */
  remember(wall: number): void {
    const offset = wall - this.clock.monotonic();
    if (Math.abs(offset - wallOffset(this.clock)) > STEP_TOLERANCE_MS)
      this.frames.unshift({ offset, seen: this.clock.monotonic() });
  }

  /**
   * Looks at the clock; returns the step (ms, negative: back) when the offset moved since the
   * last look, else 0.
   */
  look(): number {
    const offset = wallOffset(this.clock);
    const mono = this.clock.monotonic();
    const cur = this.frames[this.frames.length - 1]!;
    if (Math.abs(offset - cur.offset) <= STEP_TOLERANCE_MS) {
      cur.seen = mono;
      cur.offset = offset; // follow the slew
      return 0;
    }
    this.frames.push({ offset, seen: mono });
    return offset - cur.offset;
  }

  /** Wall times a moment of the last `ms` (monotonic) may carry; looks at the clock first. */
  span(ms: number): { from: number; to: number } {
    this.look();
    const mono = this.clock.monotonic();
    // frames last seen before the span are over; the current one always stays
    this.frames = this.frames.filter((f, i) => i === this.frames.length - 1 || f.seen >= mono - ms);
    let from = Number.POSITIVE_INFINITY;
    let to = Number.NEGATIVE_INFINITY;
    for (const f of this.frames) {
      from = Math.min(from, mono - ms + f.offset);
      to = Math.max(to, f.seen + f.offset);
    }
    return { from, to };
  }
}
