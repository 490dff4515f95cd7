/**
 * Would int8 attention keep the parity fixtures' accuracy? (issue 8's int8 target, the
 * next step after the int8 GEMMs.) Emulates on the reference backend what an int8
 * attention kernel would compute: q per row and head at unsigned 7 bits with a zero point
 * (the relaxed dot's unsigned operand), k per row and head at int8, the softmax in
 * float64, its probabilities per row at 7 bits (`round(127·e^(s - max))`, normalized by
 * the sum of the quantized values), v per column and segment at int8. Prints, per
 * fixture, the cosine of int8 (weights only) and of int8 plus int8 attention against
 * float32 logits.
 *
 * The kernel now exists (kernels/src/attention_int8.rs, bit-exact TypeScript model
 * `attentionInt8Reference`); this emulation stays as the float64 study that chose its
 * quantization. The fixtures' heads are 16 wide, where the wasm backend keeps float32
 * attention (`INT8_ATTENTION_MIN_HEAD_DIM`).
 *
 *     deno run --allow-read --allow-env bench/int8_attention_accuracy.ts
 *
 * @module
 */

import { ReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import type { AttentionOptions, AttentionResult, Tensor } from "../src/backends/backend.ts";
import { loadModel } from "../src/model.ts";
import { parseSafetensors, toFloat32 } from "../src/loaders/safetensors.ts";

const PBITS = 127;
class Int8AttnBackend extends ReferenceBackend {
  override attention(q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions): AttentionResult {
    const Q = q as unknown as { data: Float32Array; shape: number[] };
    const K = k as unknown as { data: Float32Array; shape: number[] };
    const V = v as unknown as { data: Float32Array; shape: number[] };
    const { heads, headDim: D, scale } = o;
    const [T, qc] = Q.shape;
    const kc = K.shape[1];
    const vc = V.shape[1];
    const qo = o.qOffset ?? 0, ko = o.kOffset ?? 0, vo = o.vOffset ?? 0;
    const qs = o.querySegments ?? new Int32Array(T);
    const keys = K.shape[0];
    const ks = o.keySegments ??
      (o.querySegments && T === keys ? o.querySegments : new Int32Array(keys));
    const out = new Float32Array(T * heads * D);
    const cls = o.returnClsAttention ? new Float32Array(keys * heads) : null;
    for (let h = 0; h < heads; h++) {
      // k per row int8 symmetric; v per column per segment int8 symmetric
      const kq = new Float64Array(keys * D);
      for (let j = 0; j < keys; j++) {
        let m = 0;
        for (let d = 0; d < D; d++) m = Math.max(m, Math.abs(K.data[j * kc + ko + h * D + d]));
        const s = m / 127 || 1;
        for (let d = 0; d < D; d++) {
          kq[j * D + d] = Math.round(K.data[j * kc + ko + h * D + d] / s) * s;
        }
      }
      const vq = new Float64Array(keys * D);
      let j0 = 0;
      while (j0 < keys) {
        let j1 = j0;
        while (j1 < keys && ks[j1] === ks[j0]) j1++;
        for (let d = 0; d < D; d++) {
          let m = 0;
          for (let j = j0; j < j1; j++) m = Math.max(m, Math.abs(V.data[j * vc + vo + h * D + d]));
          const s = m / 127 || 1;
          for (let j = j0; j < j1; j++) {
            vq[j * D + d] = Math.round(V.data[j * vc + vo + h * D + d] / s) * s;
          }
        }
        j0 = j1;
      }
      for (let i = 0; i < T; i++) {
        // q 7-bit with zero point
        let lo = 0, hi = 0;
        for (let d = 0; d < D; d++) {
          const x = Q.data[i * qc + qo + h * D + d];
          lo = Math.min(lo, x);
          hi = Math.max(hi, x);
        }
        const s = (hi - lo) / 127 || 1;
        const z = Math.round(-lo / s);
        const qq = new Float64Array(D);
        for (let d = 0; d < D; d++) {
          qq[d] =
            (Math.min(127, Math.max(0, Math.round(Q.data[i * qc + qo + h * D + d] / s) + z)) - z) *
            s;
        }
        const seg = qs[i];
        const isCls = cls !== null && (i === 0 || qs[i - 1] !== seg);
        const logits = new Float64Array(keys);
        let max = -Infinity;
        for (let j = 0; j < keys; j++) {
          if (ks[j] !== seg) continue;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qq[d] * kq[j * D + d];
          logits[j] = dot * scale;
          max = Math.max(max, logits[j]);
        }
        const p = new Float64Array(keys);
        let tot = 0, totq = 0;
        const pq = new Float64Array(keys);
        for (let j = 0; j < keys; j++) {
          if (ks[j] !== seg) continue;
          p[j] = Math.exp(logits[j] - max);
          tot += p[j];
          pq[j] = Math.round(p[j] * PBITS);
          totq += pq[j];
        }
        for (let d = 0; d < D; d++) {
          let sum = 0;
          for (let j = 0; j < keys; j++) if (pq[j]) sum += pq[j] * vq[j * D + d];
          out[i * heads * D + h * D + d] = sum / totq;
        }
        if (isCls) {
          for (let j = 0; j < keys; j++) if (ks[j] === seg) cls![j * heads + h] = p[j] / tot;
        }
      }
    }
    const r: AttentionResult = { output: this.upload(out, [T, heads * D]) };
    if (cls) r.clsAttention = this.upload(cls, [keys, heads]);
    return r;
  }
}
const cos = (a: Float32Array, b: Float32Array) => {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
};
const root = new URL("../../shared/fixtures/parity/", import.meta.url).pathname;
for (
  const name of [...Deno.readDirSync(root)].filter((e) => e.isDirectory).map((e) => e.name).sort()
) {
  const dir = root + name + "/";
  const c = JSON.parse(Deno.readTextFileSync(dir + "case.json"));
  const inputs = parseSafetensors(await Deno.readFile(dir + "inputs.safetensors")).tensors;
  const run = async (backend: ReferenceBackend, precision: "f32" | "int8") => {
    const m = await loadModel(dir, { backend, precision });
    try {
      if (c.call === "forward") {
        const t = inputs.get(c.input)!;
        return await m.forward(toFloat32(t), t.shape);
      }
      const imgs = c.images.map((n: string) => {
        const t = inputs.get(n)!;
        return { data: toFloat32(t), height: t.shape[1], width: t.shape[2] };
      });
      return await m.forwardPacked(imgs, c.groups);
    } finally {
      m.close();
    }
  };
  try {
    const f = await run(new ReferenceBackend(), "f32");
    const w = await run(new ReferenceBackend(), "int8");
    const a = await run(new Int8AttnBackend(), "int8");
    console.log(
      name.padEnd(26),
      "weights-int8",
      cos(f, w).toFixed(6),
      "+int8-attn",
      cos(f, a).toFixed(6),
    );
  } catch (e) {
    console.log(name, "skip", String(e).slice(0, 80));
  }
}
