// rms_norm_f32: y = x / sqrt(mean(x²) + eps) · gamma over consecutive groups of
// `group_size` columns (the whole row, or one head's slice for per-head q/k norms).
// One 64-invocation workgroup per (row, group).

struct Params {
  // rows × groups per row
  items: u32,
  cols: u32,
  group_size: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>; // [rows, cols]
@group(0) @binding(2) var<storage, read> gamma: array<f32>; // [cols]
@group(0) @binding(3) var<storage, read_write> y: array<f32>; // [rows, cols]

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) groups: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let item = wid.y * groups.x + wid.x;
  if (item >= params.items) {
    return;
  }
  // Groups tile each row exactly, so item × group_size is the group's first element.
  let base = item * params.group_size;
  let col0 = base % params.cols;
  var squares = 0.0;
  for (var c = lane; c < params.group_size; c += WG) {
    let value = x[base + c];
    squares += value * value;
  }
  partial[lane] = squares;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lane < stride) {
      partial[lane] += partial[lane + stride];
    }
    workgroupBarrier();
  }
  let inv = inverseSqrt(partial[0] / f32(params.group_size) + params.eps);
  for (var c = lane; c < params.group_size; c += WG) {
    y[base + c] = x[base + c] * inv * gamma[col0 + c];
  }
}
