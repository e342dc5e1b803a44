// Sinusoidal timestep embedding (guided-diffusion): freq_i = exp(-ln(10000) * i / half)
// (computed on the host, see timestep.rs),
// out = [cos(t * freq), sin(t * freq)] (SIN_FIRST flips the halves); odd dims end with 0.
struct Params { n: u32, dim: u32, sin_first: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read> freqs: array<f32>;   // [half], from the host
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if (e >= p.n * p.dim) { return; }
    let n = e / p.dim;
    let j = e % p.dim;
    let half = p.dim / 2u;
    if (j >= 2u * half) { out[e] = 0.0; return; }
    let i = j % half;
    let sc = sincos(t[n] * freqs[i]);
    let first = j < half;
    let use_cos = first != (p.sin_first != 0u);
    out[e] = select(sc.x, sc.y, use_cos);
}
