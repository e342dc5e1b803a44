// Multi-head attention with online softmax (flash-attention style): one
// workgroup = 64 queries of one (batch, head); keys/values stream through
// workgroup memory 32 at a time, so the [T, S+T] logits never exist in memory.
// Keys = [encoder tokens (S) ; self tokens (T_kv)] — GLIDE prepends the text
// tokens. Every operand is addressed by (base, batch, head, token, channel)
// strides, so the legacy interleaved QKV layouts need no reshuffling.
// Scale `scale` is applied to q and to k (GLIDE: 1/sqrt(sqrt(d))).
// Head dim D <= 64 is a specialisation constant, so the per-channel loops
// unroll and q/acc stay in registers (with a runtime bound they would be
// indexed dynamically and live in slow per-thread memory).
// Padded to 32 bytes: nested structs in uniforms are 16-byte aligned.
struct Operand { base: u32, sb: u32, sh: u32, st: u32, sc: u32, pad0: u32, pad1: u32, pad2: u32 }
struct Params {
    q: Operand, k: Operand, v: Operand, ek: Operand, ev: Operand, o: Operand,
    tq: u32, tkv: u32, s_enc: u32,
    heads: u32, scale: f32, causal: u32, has_mask: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qbuf: array<f32>;
@group(0) @binding(2) var<storage, read> kbuf: array<f32>;
@group(0) @binding(3) var<storage, read> vbuf: array<f32>;
@group(0) @binding(4) var<storage, read> ekbuf: array<f32>;
@group(0) @binding(5) var<storage, read> evbuf: array<f32>;
@group(0) @binding(6) var<storage, read> mask: array<f32>;   // [B, S + T_kv] additive
@group(0) @binding(7) var<storage, read_write> obuf: array<f32>;

override D: u32 = 64u;
const KT: u32 = 32u;
var<workgroup> ks: array<f32, 2048>;  // [KT][64]
var<workgroup> vs: array<f32, 2048>;

fn at(op: Operand, b: u32, h: u32, t: u32, c: u32) -> u32 {
    return op.base + b * op.sb + h * op.sh + t * op.st + c * op.sc;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.y;
    let b = wg.z;
    let qi = wg.x * 64u + li;
    let valid = qi < p.tq;
    let total = p.s_enc + p.tkv;
    var q: array<f32, 64>;
    var acc: array<f32, 64>;
    for (var c = 0u; c < D; c = c + 1u) {
        if (valid) { q[c] = qbuf[at(p.q, b, h, qi, c)] * p.scale; }
        acc[c] = 0.0;
    }
    var m = -1e30;
    var l = 0.0;
    for (var j0 = 0u; j0 < total; j0 = j0 + KT) {
        // Cooperative load of KT keys and values (zero past the end).
        for (var e = li; e < KT * 64u; e = e + 64u) {
            let jj = e / 64u;
            let c = e % 64u;
            let j = j0 + jj;
            var kv = 0.0;
            var vv = 0.0;
            if (j < total && c < D) {
                if (j < p.s_enc) {
                    kv = ekbuf[at(p.ek, b, h, j, c)];
                    vv = evbuf[at(p.ev, b, h, j, c)];
                } else {
                    kv = kbuf[at(p.k, b, h, j - p.s_enc, c)];
                    vv = vbuf[at(p.v, b, h, j - p.s_enc, c)];
                }
            }
            ks[e] = kv * p.scale;
            vs[e] = vv;
        }
        workgroupBarrier();
        if (valid) {
            var s: array<f32, 32>;
            var tile_max = -1e30;
            for (var jj = 0u; jj < KT; jj = jj + 1u) {
                let j = j0 + jj;
                var logit = -1e30;
                if (j < total) {
                    var dot = 0.0;
                    for (var c = 0u; c < D; c = c + 1u) { dot = fma(q[c], ks[jj * 64u + c], dot); }
                    logit = dot;
                    if (p.has_mask != 0u) { logit = logit + mask[b * total + j]; }
                    if (p.causal != 0u && j >= p.s_enc && j - p.s_enc > qi) { logit = -1e30; }
                    logit = max(logit, -1e30);
                }
                s[jj] = logit;
                tile_max = max(tile_max, logit);
            }
            let m_new = max(m, tile_max);
            let corr = exp(m - m_new);
            l = l * corr;
            for (var c = 0u; c < D; c = c + 1u) { acc[c] = acc[c] * corr; }
            for (var jj = 0u; jj < KT; jj = jj + 1u) {
                if (j0 + jj >= total) { break; }
                let pj = exp(s[jj] - m_new);
                l = l + pj;
                for (var c = 0u; c < D; c = c + 1u) { acc[c] = fma(pj, vs[jj * 64u + c], acc[c]); }
            }
            m = m_new;
        }
        workgroupBarrier();
    }
    if (valid) {
        let inv = 1.0 / l;
        for (var c = 0u; c < D; c = c + 1u) { obuf[at(p.o, b, h, qi, c)] = acc[c] * inv; }
    }
}
