// gelu_f32: y = 0.5·x·(1 + erf(x/√2)), PyTorch's default (erf) GELU, element-wise.
// WGSL has no erf: erf_f32 is a Chebyshev fit of erfc with |error| < 1.2e-7, which keeps
// GELU within 1e-6 of PyTorch's float32 result.

struct Params {
  count: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;

fn erf_f32(v: f32) -> f32 {
  let z = abs(v);
  let t = 1.0 / (1.0 + 0.5 * z);
  let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277))))))));
  let r = t * exp(-z * z + poly);
  return select(r - 1.0, 1.0 - r, v >= 0.0);
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) groups: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let i = (wid.y * groups.x + wid.x) * WG + lane;
  if (i < params.count) {
    let value = x[i];
    y[i] = 0.5 * value * (1.0 + erf_f32(value * 0.70710678118654752));
  }
}
