// attention_f32: fused multi-head attention with online softmax and segment masking.
//
// One workgroup handles 64 query rows of one head; each invocation owns one query row,
// keeps q (pre-scaled) and its output accumulator in registers, and streams blocks of
// BLOCK_KEYS keys/values through workgroup memory. Query i may only attend to the keys
// of its own segment, given as a half-open key range `ranges[i]` (segment ids are
// nondecreasing, so a segment's keys are contiguous). The workgroup only visits keys
// between the first query's range start and the last query's range end: key blocks of
// other images are never loaded, so a packed batch costs Σ nᵢ², not (Σ nᵢ)².
//
// The first query row of each segment (the CLS token) can also write its softmax row to
// `cls[key, head]`, computed in a second pass once the final max and sum are known.
//
// HEAD_VEC4 (⌈headDim / 4⌉) and BLOCK_KEYS are specialized per pipeline by the backend,
// which rewrites the two `const` lines below; the defaults make this file valid as is.

const HEAD_VEC4: u32 = 16u;
const BLOCK_KEYS: u32 = 32u;
const BLOCK_QUERIES: u32 = 64u;
// Finite stand-in for -∞ so that exp(NEG_BIG - m) is a clean 0.
const NEG_BIG: f32 = -3.0e38;

struct Params {
  queries: u32,
  keys: u32,
  heads: u32,
  head_dim: u32,
  // Element offsets of head 0's first column and row strides of q, k, v.
  q_offset: u32,
  q_stride: u32,
  k_offset: u32,
  k_stride: u32,
  v_offset: u32,
  v_stride: u32,
  // 1: write the CLS rows' attention to `cls`.
  return_cls: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>; // [queries, q_stride]
@group(0) @binding(2) var<storage, read> k: array<f32>; // [keys, k_stride]
@group(0) @binding(3) var<storage, read> v: array<f32>; // [keys, v_stride]
@group(0) @binding(4) var<storage, read> ranges: array<vec2<u32>>; // [queries]: key range
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // [queries, heads × head_dim]
@group(0) @binding(6) var<storage, read_write> cls: array<f32>; // [keys, heads]

var<workgroup> k_tile: array<vec4<f32>, BLOCK_KEYS * HEAD_VEC4>; // [BLOCK_KEYS][HEAD_VEC4]
var<workgroup> v_tile: array<vec4<f32>, BLOCK_KEYS * HEAD_VEC4>;

// Four consecutive head columns of row `row` (zero past head_dim).
fn load4_k(row: u32, d4: u32, h: u32) -> vec4<f32> {
  let base = row * params.k_stride + params.k_offset + h * params.head_dim;
  var r = vec4<f32>(0.0);
  for (var c = 0u; c < 4u; c++) {
    let d = d4 * 4u + c;
    if (d < params.head_dim) {
      r[c] = k[base + d];
    }
  }
  return r;
}

fn load4_v(row: u32, d4: u32, h: u32) -> vec4<f32> {
  let base = row * params.v_stride + params.v_offset + h * params.head_dim;
  var r = vec4<f32>(0.0);
  for (var c = 0u; c < 4u; c++) {
    let d = d4 * 4u + c;
    if (d < params.head_dim) {
      r[c] = v[base + d];
    }
  }
  return r;
}

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let h = wid.y;
  let q0 = wid.x * BLOCK_QUERIES;
  let qi = q0 + lane;
  let has_query = qi < params.queries;
  let q_last = min(q0 + BLOCK_QUERIES, params.queries) - 1u;
  // Uniform across the workgroup: the union of the block's key ranges.
  let block_start = ranges[q0].x;
  let block_end = ranges[q_last].y;

  var own = vec2<u32>(0u, 0u);
  var qv: array<vec4<f32>, HEAD_VEC4>;
  var acc: array<vec4<f32>, HEAD_VEC4>;
  if (has_query) {
    own = ranges[qi];
    let base = qi * params.q_stride + params.q_offset + h * params.head_dim;
    for (var d4 = 0u; d4 < HEAD_VEC4; d4++) {
      var r = vec4<f32>(0.0);
      for (var c = 0u; c < 4u; c++) {
        let d = d4 * 4u + c;
        if (d < params.head_dim) {
          r[c] = q[base + d] * params.scale;
        }
      }
      qv[d4] = r;
    }
  }
  for (var d4 = 0u; d4 < HEAD_VEC4; d4++) {
    acc[d4] = vec4<f32>(0.0);
  }
  var running_max = NEG_BIG;
  var running_sum = 0.0;

  for (var t0 = block_start; t0 < block_end; t0 += BLOCK_KEYS) {
    for (var i = lane; i < BLOCK_KEYS * HEAD_VEC4; i += BLOCK_QUERIES) {
      let j = t0 + i / HEAD_VEC4;
      let d4 = i % HEAD_VEC4;
      if (j < block_end) {
        k_tile[i] = load4_k(j, d4, h);
        v_tile[i] = load4_v(j, d4, h);
      } else {
        k_tile[i] = vec4<f32>(0.0);
        v_tile[i] = vec4<f32>(0.0);
      }
    }
    workgroupBarrier();

    // Online softmax one key at a time: the running max only moves on a new maximum,
    // so the rescale of the accumulator is rare after the first keys.
    let block_keys = min(BLOCK_KEYS, block_end - t0);
    for (var j = 0u; j < block_keys; j++) {
      let key = t0 + j;
      if (key >= own.x && key < own.y) {
        var dot4 = vec4<f32>(0.0);
        for (var d4 = 0u; d4 < HEAD_VEC4; d4++) {
          dot4 = fma(qv[d4], k_tile[j * HEAD_VEC4 + d4], dot4);
        }
        let s = dot4.x + dot4.y + dot4.z + dot4.w;
        if (s > running_max) {
          let correction = exp(running_max - s);
          running_sum *= correction;
          for (var d4 = 0u; d4 < HEAD_VEC4; d4++) {
            acc[d4] *= correction;
          }
          running_max = s;
        }
        let p = exp(s - running_max);
        running_sum += p;
        for (var d4 = 0u; d4 < HEAD_VEC4; d4++) {
          acc[d4] = fma(vec4<f32>(p), v_tile[j * HEAD_VEC4 + d4], acc[d4]);
        }
      }
    }
    workgroupBarrier();
  }

  if (!has_query) {
    return;
  }
  let width = params.heads * params.head_dim;
  let inv = select(0.0, 1.0 / running_sum, running_sum > 0.0);
  let out_base = qi * width + h * params.head_dim;
  for (var d4 = 0u; d4 < HEAD_VEC4; d4++) {
    for (var c = 0u; c < 4u; c++) {
      let d = d4 * 4u + c;
      if (d < params.head_dim) {
        out[out_base + d] = acc[d4][c] * inv;
      }
    }
  }

  // A segment's first query row: its range differs from the previous row's (different
  // segments have disjoint key ranges, and an empty range has nothing to write).
  let is_cls = qi == 0u || any(ranges[qi - 1u] != own);
  if (params.return_cls == 1u && is_cls && running_sum > 0.0) {
    for (var key = own.x; key < own.y; key++) {
      var dot4 = vec4<f32>(0.0);
      for (var d4 = 0u; d4 < HEAD_VEC4; d4++) {
        dot4 = fma(qv[d4], load4_k(key, d4, h), dot4);
      }
      let s = dot4.x + dot4.y + dot4.z + dot4.w;
      cls[key * params.heads + h] = exp(s - running_max) * inv;
    }
  }
}
