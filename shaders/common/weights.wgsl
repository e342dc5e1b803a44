// Weight dequantisation, shared by matmul and conv (the portable variant; see
// weights_f16.wgsl for the one used with `shader-f16`). The kernel declares
// `w: array<WWord>` and keeps its weight tile in workgroup memory as `WTile`;
// the layout per row is documented in engine/src/quant.rs.
// W_DTYPE: 0 f32, 1 f16 (packed pairs), 2 q8 blocks, 3 q4 blocks.
override W_DTYPE: u32 = 0u;
alias WWord = u32;
alias WTile = f32;

fn load_w(row_base: u32, col: u32) -> WTile {
    switch W_DTYPE {
        case 1u: {
            let p = unpack2x16float(w[row_base + (col >> 1u)]);
            return select(p.x, p.y, (col & 1u) == 1u);
        }
        case 2u: {
            let blk = row_base + (col >> 5u) * 9u;
            let i = col & 31u;
            let word = w[blk + (i >> 2u)];
            let code = bitcast<i32>(word << (24u - 8u * (i & 3u))) >> 24u;
            return f32(code) * bitcast<f32>(w[blk + 8u]);
        }
        case 3u: {
            let blk = row_base + (col >> 5u) * 5u;
            let i = col & 31u;
            let code = i32((w[blk + (i >> 3u)] >> (4u * (i & 7u))) & 15u) - 8;
            return f32(code) * bitcast<f32>(w[blk + 4u]);
        }
        default: {
            return bitcast<f32>(w[row_base + col]);
        }
    }
}
