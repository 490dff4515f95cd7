/**
 * Typed errors. Every bad input (weights, configs, images, tensors) ends in one of
 * these, with a message that says what was wrong and where, so a caller (and the
 * HTTP server, which maps `code` to a status) can tell a user's mistake from a bug.
 *
 * @module
 */

/** Machine-readable reason of an {@link EdgeVitError}. */
export type ErrorCode =
  /** A checkpoint file is malformed: truncated, bad header, offsets out of range. */
  | "invalid_checkpoint"
  /** A config.json is malformed or disagrees with the weights. */
  | "invalid_config"
  /** Something valid but not supported here: unknown architecture, dtype, op. */
  | "unsupported"
  /** An image could not be decoded (corrupt, truncated, empty). */
  | "invalid_image"
  /** An image format that is not JPEG, PNG or WebP. */
  | "unsupported_media_type"
  /** An image or body over a configured limit (checked before decoding). */
  | "too_large"
  /** Arguments of a call do not fit (shapes, lengths, ranges). */
  | "invalid_argument"
  /** A backend failed (device lost, out of memory). */
  | "backend_failure";

/**
 * The error every edgevit API throws for bad input.
 *
 * @example
 * ```ts
 * import { EdgeVitError } from "./errors.ts";
 * try {
 *   throw new EdgeVitError("invalid_image", "PNG is truncated");
 * } catch (error) {
 *   if (error instanceof EdgeVitError) console.log(error.code); // "invalid_image"
 * }
 * ```
 */
export class EdgeVitError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "EdgeVitError";
    this.code = code;
  }
}
