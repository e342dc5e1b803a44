// Channel-slice copy: dst[n, dst_off + c, i] = src[n, src_off + c, i] for
// c < count, i < inner. Concat = two copies; channel splits = one.
struct Params { n: u32, count: u32, inner: u32, src_c: u32, src_off: u32, dst_c: u32, dst_off: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let e = linear_group(wg, nwg) * 256u + li;
    if (e >= p.n * p.count * p.inner) { return; }
    let i = e % p.inner;
    let c = (e / p.inner) % p.count;
    let n = e / (p.inner * p.count);
    dst[(n * p.dst_c + p.dst_off + c) * p.inner + i] = src[(n * p.src_c + p.src_off + c) * p.inner + i];
}
