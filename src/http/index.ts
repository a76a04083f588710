/**
 * Local HTTP: `/healthz`, `/readyz`, `/metrics`, JSON errors and the routes parts add through
 * `HttpRoutes` (src/part.ts). The daemon creates one `HttpServer` and hands it to every part.
 */
export { HttpServer, type HttpServerOptions, type Readiness, sendJson } from './server.js';
