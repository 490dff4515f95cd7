// gather_rows_f32: out[i, :] = x[rows[i], :] (token pruning, CLS extraction, reordering).
// Row indices were range-checked on the host.

struct Params {
  out_rows: u32,
  cols: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>; // [input rows, cols]
@group(0) @binding(2) var<storage, read> rows: array<u32>; // [out_rows]
@group(0) @binding(3) var<storage, read_write> y: array<f32>; // [out_rows, cols]

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) groups: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let i = (wid.y * groups.x + wid.x) * WG + lane;
  if (i < params.out_rows * params.cols) {
    let row = i / params.cols;
    let col = i % params.cols;
    y[i] = x[rows[row] * params.cols + col];
  }
}
