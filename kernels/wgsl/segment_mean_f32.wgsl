// segment_mean_f32: out[s, c] = mean of x[offsets[s] … offsets[s+1]-1, c] (mean pooling
// per image of a packed batch). One invocation per output element; consecutive
// invocations read consecutive columns of the same rows.

struct Params {
  segments: u32,
  cols: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>; // [rows, cols]
@group(0) @binding(2) var<storage, read> offsets: array<u32>; // [segments + 1]
@group(0) @binding(3) var<storage, read_write> y: array<f32>; // [segments, cols]

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) groups: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let i = (wid.y * groups.x + wid.x) * WG + lane;
  if (i >= params.segments * params.cols) {
    return;
  }
  let s = i / params.cols;
  let col = i % params.cols;
  let start = offsets[s];
  let end = offsets[s + 1u];
  var sum = 0.0;
  for (var r = start; r < end; r++) {
    sum += x[r * params.cols + col];
  }
  y[i] = sum / f32(end - start);
}
