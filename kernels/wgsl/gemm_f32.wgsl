// gemm_f32: C[M, N] = act(A[M, K] · B[N, K]ᵀ + bias[N]).
//
// B keeps PyTorch's nn.Linear layout (one row per output channel), so prepared weights
// need no transpose. A 16×16 workgroup computes a 64×64 tile of C, each invocation a
// 4×4 register tile; K advances in steps of 16 through workgroup-memory tiles stored
// k-major, so the inner loop reads one vec4 of A and one of B per k and does 16 FMAs.
// Out-of-range rows/columns load as zero, so any M, N, K works.

struct Params {
  m: u32,
  n: u32,
  k: u32,
  // Element offset of A[0, 0] and row stride of A (lets a GEMM read a column window).
  a_offset: u32,
  a_stride: u32,
  // 0: none, 1: GELU (erf form).
  activation: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>; // [M, a_stride]
@group(0) @binding(2) var<storage, read> b: array<f32>; // [N, K]
@group(0) @binding(3) var<storage, read> bias: array<f32>; // [N]
@group(0) @binding(4) var<storage, read_write> c: array<f32>; // [M, N]

const TILE: u32 = 64u;
const TILE_K: u32 = 16u;

// [TILE_K][TILE / 4]: one vec4 holds 4 consecutive rows (A) or columns (B) at one k.
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

fn load_a(row: u32, col: u32) -> f32 {
  if (row < params.m && col < params.k) {
    return a[params.a_offset + row * params.a_stride + col];
  }
  return 0.0;
}

fn load_b(row: u32, col: u32) -> f32 {
  if (row < params.n && col < params.k) {
    return b[row * params.k + col];
  }
  return 0.0;
}

// erf with |error| < 1.2e-7 (Chebyshev fit of erfc), so GELU stays within 1e-6 of PyTorch.
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
  // Loader role: 16 k positions × 16 groups of 4 rows/columns.
  let load_k = index % TILE_K;
  let load_group = index / TILE_K;

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
    let n = col0 + load_group * 4u;
    b_tile[load_k * 16u + load_group] = vec4<f32>(
      load_b(n, kk), load_b(n + 1u, kk), load_b(n + 2u, kk), load_b(n + 3u, kk),
    );
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
        var value = acc[i][j] + bias[col];
        if (params.activation == 1u) {
          value = gelu(value);
        }
        c[row * params.n + col] = value;
      }
    }
  }
}
