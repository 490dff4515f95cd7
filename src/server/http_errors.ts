/**
 * Errors → HTTP. Every failure a client can cause ends as JSON
 * `{"error": {"code", "message"}}` with the status that tells the client what to do
 * next (fix the request, shrink it, retry later), and internal failures never leak
 * their details.
 *
 * @module
 */

import { EdgeVitError, type ErrorCode } from "../errors.ts";

/** Machine-readable codes the server answers with, beyond the engine's {@link ErrorCode}s. */
export type HttpErrorCode =
  | ErrorCode
  | "bad_request"
  | "unauthorized"
  | "not_found"
  | "model_not_found"
  | "method_not_allowed"
  | "queue_full"
  | "not_ready"
  | "shutting_down"
  | "deadline_exceeded"
  | "internal";

/**
 * An error with its HTTP status, thrown anywhere in request handling.
 *
 * @example
 * ```ts
 * import { HttpError, errorResponse } from "./http_errors.ts";
 * const response = errorResponse(new HttpError(404, "not_found", "no route GET /nope"));
 * console.log(response.status); // 404
 * ```
 */
export class HttpError extends Error {
  readonly status: number;
  readonly code: HttpErrorCode;
  readonly headers: Record<string, string>;
  constructor(
    status: number,
    code: HttpErrorCode,
    message: string,
    headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

/** Status for each engine error code: client mistakes are 4xx, our own failures 5xx. */
const STATUS_OF_CODE: Record<ErrorCode, number> = {
  invalid_argument: 400,
  invalid_image: 422,
  unsupported_media_type: 415,
  too_large: 413,
  // A request can only reach these through the server's own models: our fault, not the client's.
  invalid_checkpoint: 500,
  invalid_config: 500,
  unsupported: 400,
  backend_failure: 500,
};

/**
 * Maps anything thrown while handling a request to an {@link HttpError}.
 * Unknown errors become a generic 500 (their message may hold paths or internals).
 */
export function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  if (error instanceof EdgeVitError) {
    const status = STATUS_OF_CODE[error.code] ?? 500;
    const message = status >= 500 ? "the model failed to run this request" : error.message;
    return new HttpError(status, error.code, message);
  }
  return new HttpError(500, "internal", "internal server error");
}

/**
 * A response with a status other than 200. Deno 2.9 retains ~100 bytes for every
 * `new Response(stringOrBytes, {status: 4xx})` (measured with --expose-gc; a null or
 * stream body does not leak), which a flood of bad requests turns into steady heap
 * growth, so the bytes go through a one-chunk stream.
 */
export function statusResponse(
  status: number,
  body: string,
  headers: Record<string, string>,
): Response {
  const bytes = new TextEncoder().encode(body);
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(bytes);
      controller.close();
    },
  });
  return new Response(stream, {
    status,
    headers: { ...headers, "content-length": String(bytes.byteLength) },
  });
}

/** Serializes an error as the JSON body every error response has. */
export function errorResponse(error: unknown): Response {
  const http = toHttpError(error);
  return statusResponse(
    http.status,
    JSON.stringify({ error: { code: http.code, message: http.message } }),
    { "content-type": "application/json; charset=utf-8", ...http.headers },
  );
}
