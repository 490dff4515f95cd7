// head_norms_f32: out[r, h] = ‖x[r, column_offset + h·head_dim … + head_dim]‖₂
// (ATS weighs CLS attention by the norm of each value head). One invocation per (r, h).

struct Params {
  rows: u32,
  cols: u32,
  heads: u32,
  head_dim: u32,
  column_offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>; // [rows, cols]
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [rows, heads]

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) groups: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let i = (wid.y * groups.x + wid.x) * WG + lane;
  if (i >= params.rows * params.heads) {
    return;
  }
  let row = i / params.heads;
  let h = i % params.heads;
  let base = row * params.cols + params.column_offset + h * params.head_dim;
  var squares = 0.0;
  for (var d = 0u; d < params.head_dim; d++) {
    let value = x[base + d];
    squares += value * value;
  }
  y[i] = sqrt(squares);
}
