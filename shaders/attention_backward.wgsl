// Gradients of multi-head attention O = softmax((s q)(s k)^T) v with respect to
// q, k and v (CLIP guidance's backward pass). Operands are [B, L, H*d],
// element (b, t, h, c) at (b*L + t)*W + h*d + c. The scratch buffer holds the
// probabilities P and the logit gradients dS, [2][B][H][L][L]:
//   probs: one invocation per query row (b, h, i) writes P[i, :] and
//          dS[i, j] = P[i, j] * (dO_i . v_j - sum_j' P[i, j'] dO_i . v_j');
//   grads: one invocation per element (b, t, h, c) reduces over the other token:
//          dq = s^2 sum_j dS[t, j] k_j, dk = s^2 sum_i dS[i, t] q_i, dv = sum_i P[i, t] dO_i.
// Masked (causal) entries have P = dS = 0. Plain loops: the CLIP image
// encoder's sequences are short (257 tokens at full size).
struct Params { b: u32, l: u32, heads: u32, d: u32, scale: f32, causal: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
// probs only
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<f32>;
// grads only
@group(0) @binding(4) var<storage, read> scratch_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> dq: array<f32>;
@group(0) @binding(6) var<storage, read_write> dk: array<f32>;
@group(0) @binding(7) var<storage, read_write> dv: array<f32>;

fn at(b: u32, t: u32, h: u32, c: u32) -> u32 {
    return (b * p.l + t) * p.heads * p.d + h * p.d + c;
}

fn dot_rows(x: u32, y: u32) -> f32 {
    var s = 0.0;
    for (var c = 0u; c < p.d; c = c + 1u) { s = fma(q[x + c], k[y + c], s); }
    return s;
}

fn masked(i: u32, j: u32) -> bool {
    return p.causal != 0u && j > i;
}

@compute @workgroup_size(64)
fn probs(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let h = gid.y;
    let b = gid.z;
    if (i >= p.l) { return; }
    let s2 = p.scale * p.scale;
    let qi = at(b, i, h, 0u);
    var m = -3.0e38;
    for (var j = 0u; j < p.l; j = j + 1u) {
        if (!masked(i, j)) { m = max(m, s2 * dot_rows(qi, at(b, j, h, 0u))); }
    }
    var sum = 0.0;
    for (var j = 0u; j < p.l; j = j + 1u) {
        if (!masked(i, j)) { sum = sum + exp(s2 * dot_rows(qi, at(b, j, h, 0u)) - m); }
    }
    let row = ((b * p.heads + h) * p.l + i) * p.l;
    let ds_base = p.b * p.heads * p.l * p.l;
    var dsum = 0.0;
    for (var j = 0u; j < p.l; j = j + 1u) {
        var pj = 0.0;
        var dpj = 0.0;
        if (!masked(i, j)) {
            pj = exp(s2 * dot_rows(qi, at(b, j, h, 0u)) - m) / sum;
            let vj = at(b, j, h, 0u);
            for (var c = 0u; c < p.d; c = c + 1u) { dpj = fma(dout[qi + c], v[vj + c], dpj); }
        }
        scratch[row + j] = pj;
        scratch[ds_base + row + j] = dpj;
        dsum = fma(pj, dpj, dsum);
    }
    for (var j = 0u; j < p.l; j = j + 1u) {
        let e = ds_base + row + j;
        scratch[e] = scratch[row + j] * (scratch[e] - dsum);
    }
}

@compute @workgroup_size(64)
fn grads(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    let hc = gid.y;
    let b = gid.z;
    if (t >= p.l) { return; }
    let h = hc / p.d;
    let c = hc % p.d;
    let s2 = p.scale * p.scale;
    let ds_base = p.b * p.heads * p.l * p.l;
    let head = (b * p.heads + h) * p.l * p.l;
    var gq = 0.0;
    var gk = 0.0;
    var gv = 0.0;
    for (var o = 0u; o < p.l; o = o + 1u) {
        // Row t of P/dS (t as the query) and column t (t as the key).
        let row_t = ds_base + head + t * p.l + o;
        let col_t = head + o * p.l + t;
        gq = fma(scratch_in[row_t], k[at(b, o, h, c)], gq);
        gk = fma(scratch_in[ds_base + col_t], q[at(b, o, h, c)], gk);
        gv = fma(scratch_in[col_t], dout[at(b, o, h, c)], gv);
    }
    let e = at(b, t, h, c);
    dq[e] = s2 * gq;
    dk[e] = s2 * gk;
    dv[e] = gv;
}
