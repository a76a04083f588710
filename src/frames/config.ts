import type { ConfigSection } from '../config/types.js';

/** The `frames` section of the config file. Values arrive as FramesOptions (types.ts). */
export const framesConfigSection: ConfigSection = {
  name: 'frames',
  doc: 'Status frames: PNG file, HTTP /frame.png, Linux framebuffer and 1-bit e-ink.',
  fields: {
    enabled: { type: 'boolean', default: true, doc: 'Draw status frames.' },
    interval: {
      type: 'duration',
      default: 5000,
      min: 1000,
      max: 3_600_000,
      doc: 'How often a frame is drawn; nothing is drawn when nothing visible changed.',
    },
    sizes: {
      type: 'string[]',
      default: ['800x480'],
      doc: 'Sizes drawn every interval: 800x480, 480x320, 320x240 (colour), 250x122, 296x128 (1-bit). The first is the default of GET /frame.png.',
    },
    pngFile: {
      type: 'boolean',
      default: true,
      doc: 'Write <runtimeDir>/frame-<size>.png (replaced atomically) for each size; the runtime directory is a tmpfs (node.runtimeDir).',
    },
    timeZone: {
      type: 'string',
      optional: true,
      doc: 'IANA time zone of the clock on the frame; default: the system zone.',
    },
    framebuffer: {
      type: 'string',
      optional: true,
      doc: 'Framebuffer device, e.g. /dev/fb0 or /dev/fb1 (SPI TFT via fbtft); unset: none.',
    },
    framebufferRotation: {
      type: 'integer',
      default: 0,
      min: 0,
      max: 270,
      doc: 'Clockwise rotation: 0, 90, 180 or 270.',
    },
    framebufferBgr: {
      type: 'boolean',
      default: false,
      doc: 'The panel wants blue in the high bits (BGR565 / BGR order).',
    },
    einkSize: {
      type: 'string',
      optional: true,
      enum: ['250x122', '296x128'],
      doc: 'e-ink panel size; unset: no e-ink output.',
    },
    einkMode: {
      type: 'string',
      default: 'threshold',
      enum: ['threshold', 'dither'],
      doc: 'Conversion to 1 bit.',
    },
    einkThreshold: {
      type: 'integer',
      default: 128,
      min: 1,
      max: 255,
      doc: 'Luma below this is black (threshold mode and dither midpoint).',
    },
    einkMinRefresh: {
      type: 'duration',
      default: 180_000,
      min: 0,
      doc: 'Minimum time between e-ink refreshes (panels flash and wear); newer frames wait.',
    },
    einkBitmapPath: {
      type: 'string',
      optional: true,
      doc: 'Packed 1-bit bitmap for the panel driver; default <runtimeDir>/eink.bin.',
    },
    einkPbmPath: {
      type: 'string',
      optional: true,
      doc: 'PBM (P4) copy of the e-ink frame; default <runtimeDir>/eink.pbm.',
    },
    einkInvert: {
      type: 'boolean',
      default: false,
      doc: 'Write 1 = white in the bitmap file (PBM stays 1 = black).',
    },
  },
};
