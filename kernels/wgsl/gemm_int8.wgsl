// gemm_int8: C[M, N] = act(scale[n] · (A[M, K] · Q[N, K]ᵀ) + bias[N]) with int8 weights.
//
// Weight-only quantization: activations stay f32, weights are symmetric int8 with one
// scale per output channel, packed 4 per u32 along K (little-endian: k = 4w + i lives in
// bits 8i…8i+7 of word w; rows padded with zeros to a multiple of 4). Weights cost a
// quarter of the f32 bandwidth; the scale is applied once per output, after the sum.
// Tiling is the same as gemm_f32: 64×64 output tile per 16×16 workgroup, 4×4 per
// invocation, K in steps of 16 (4 packed words per weight row).

struct Params {
  m: u32,
  n: u32,
  k: u32,
  a_offset: u32,
  a_stride: u32,
  // 0: none, 1: GELU (erf form).
  activation: u32,
  // Packed words per weight row: ceil(k / 4).
  k_words: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>; // [M, a_stride]
@group(0) @binding(2) var<storage, read> q: array<u32>; // [N, k_words]
@group(0) @binding(3) var<storage, read> scales: array<f32>; // [N]
@group(0) @binding(4) var<storage, read> bias: array<f32>; // [N]
@group(0) @binding(5) var<storage, read_write> c: array<f32>; // [M, N]

const TILE: u32 = 64u;
const TILE_K: u32 = 16u;

var<workgroup> a_tile: array<vec4<f32>, 256>; // [TILE_K][TILE / 4] rows
var<workgroup> b_tile: array<vec4<f32>, 256>; // [TILE_K][TILE / 4] columns

fn load_a(row: u32, col: u32) -> f32 {
  if (row < params.m && col < params.k) {
    return a[params.a_offset + row * params.a_stride + col];
  }
  return 0.0;
}

// Sign-extends byte `i` of a packed word.
fn int8_at(word: u32, i: u32) -> f32 {
  return f32(bitcast<i32>(word << (24u - 8u * i)) >> 24u);
}

fn erf_f32(x: f32) -> f32 {
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277))))))));
  let r = t * exp(-z * z + poly);
  return select(r - 1.0, 1.0 - r, x >= 0.0);
}

fn gelu(x: f32) -> f32 {
  return 0.5 * x * (1.0 + erf_f32(x * 0.70710678118654752));
}

@compute @workgroup_size(16, 16)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) index: u32,
) {
  let row0 = wid.y * TILE;
  let col0 = wid.x * TILE;
  let load_k = index % TILE_K;
  let load_group = index / TILE_K;
  // Weight loader role: one packed word (4 k values) of one of the 64 tile columns.
  let word_in_tile = index % 4u;
  let weight_col = index / 4u;

  var acc0 = vec4<f32>(0.0);
  var acc1 = vec4<f32>(0.0);
  var acc2 = vec4<f32>(0.0);
  var acc3 = vec4<f32>(0.0);

  for (var k0 = 0u; k0 < params.k; k0 += TILE_K) {
    let kk = k0 + load_k;
    let r = row0 + load_group * 4u;
    a_tile[load_k * 16u + load_group] = vec4<f32>(
      load_a(r, kk), load_a(r + 1u, kk), load_a(r + 2u, kk), load_a(r + 3u, kk),
    );
    let n = col0 + weight_col;
    let w = k0 / 4u + word_in_tile;
    var word = 0u;
    if (n < params.n && w < params.k_words) {
      word = q[n * params.k_words + w];
    }
    for (var i = 0u; i < 4u; i++) {
      b_tile[(word_in_tile * 4u + i) * 16u + weight_col / 4u][weight_col % 4u] = int8_at(word, i);
    }
    workgroupBarrier();
    for (var k = 0u; k < TILE_K; k++) {
      let av = a_tile[k * 16u + lid.y];
      let bv = b_tile[k * 16u + lid.x];
      acc0 = fma(vec4<f32>(av.x), bv, acc0);
      acc1 = fma(vec4<f32>(av.y), bv, acc1);
      acc2 = fma(vec4<f32>(av.z), bv, acc2);
      acc3 = fma(vec4<f32>(av.w), bv, acc3);
    }
    workgroupBarrier();
  }

  let out_row = row0 + lid.y * 4u;
  let out_col = col0 + lid.x * 4u;
  var acc = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
  for (var i = 0u; i < 4u; i++) {
    let row = out_row + i;
    if (row >= params.m) {
      break;
    }
    for (var j = 0u; j < 4u; j++) {
      let col = out_col + j;
      if (col < params.n) {
        var value = acc[i][j] * scales[col] + bias[col];
        if (params.activation == 1u) {
          value = gelu(value);
        }
        c[row * params.n + col] = value;
      }
    }
  }
}
