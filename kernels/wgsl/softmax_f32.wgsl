// softmax_f32: softmax over the last axis of [rows, cols]; one 128-invocation
// workgroup per row (max reduction, then sum of exp(x - max), then normalize).

struct Params {
  rows: u32,
  cols: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>; // [rows, cols]
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [rows, cols]

const WG: u32 = 128u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) groups: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let row = wid.y * groups.x + wid.x;
  if (row >= params.rows) {
    return;
  }
  let base = row * params.cols;
  var row_max = -3.0e38;
  for (var c = lane; c < params.cols; c += WG) {
    row_max = max(row_max, x[base + c]);
  }
  partial[lane] = row_max;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lane < stride) {
      partial[lane] = max(partial[lane], partial[lane + stride]);
    }
    workgroupBarrier();
  }
  row_max = partial[0];
  workgroupBarrier();

  var sum = 0.0;
  for (var c = lane; c < params.cols; c += WG) {
    sum += exp(x[base + c] - row_max);
  }
  partial[lane] = sum;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lane < stride) {
      partial[lane] += partial[lane + stride];
    }
    workgroupBarrier();
  }
  let inv = 1.0 / partial[0];
  for (var c = lane; c < params.cols; c += WG) {
    y[base + c] = exp(x[base + c] - row_max) * inv;
  }
}
