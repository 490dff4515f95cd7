// layer_norm_f32: y = (x - mean) / sqrt(var + eps) · gamma (+ beta) over each row.
//
// One 128-invocation workgroup per row; mean and variance are two separate reductions
// (not E[x²] - E[x]²) so large means do not cancel away the variance in f32.

struct Params {
  rows: u32,
  cols: u32,
  // 0: no beta (SimpleViT-style norm), 1: add beta.
  has_beta: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>; // [rows, cols]
@group(0) @binding(2) var<storage, read> gamma: array<f32>; // [cols]
@group(0) @binding(3) var<storage, read> beta: array<f32>; // [cols] (unused if !has_beta)
@group(0) @binding(4) var<storage, read_write> y: array<f32>; // [rows, cols]

const WG: u32 = 128u;
var<workgroup> partial: array<f32, WG>;

fn workgroup_sum(value: f32, lane: u32) -> f32 {
  partial[lane] = value;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lane < stride) {
      partial[lane] += partial[lane + stride];
    }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier();
  return total;
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) groups: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  // Rows beyond 65535 spill into the y dimension of the dispatch.
  let row = wid.y * groups.x + wid.x;
  if (row >= params.rows) {
    return;
  }
  let base = row * params.cols;
  var sum = 0.0;
  for (var c = lane; c < params.cols; c += WG) {
    sum += x[base + c];
  }
  let mean = workgroup_sum(sum, lane) / f32(params.cols);
  var squares = 0.0;
  for (var c = lane; c < params.cols; c += WG) {
    let d = x[base + c] - mean;
    squares += d * d;
  }
  let inv = inverseSqrt(workgroup_sum(squares, lane) / f32(params.cols) + params.eps);
  for (var c = lane; c < params.cols; c += WG) {
    var value = (x[base + c] - mean) * inv * gamma[c];
    if (params.has_beta == 1u) {
      value += beta[c];
    }
    y[base + c] = value;
  }
}
