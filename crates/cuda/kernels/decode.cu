// Split-K decode attention (flash-decoding) over the paged, un-rotated KV cache, for dense
// decode and for HiP's block-sparse decode (DESIGN.md §4.3), with RoPE applied in-kernel.
//
// Oracles: dense: `infinihip_core::hip::dense_causal_attention` (through the CPU backend,
// crates/engine/tests/gpu_ops.rs); block-sparse: `infinihip_core::hip::block_sparse_attention`
// (crates/engine/tests/gpu_hip.rs).
//
// One query token per sequence (a decode step). Its keys are the virtual list of
// `key_position` (common.cuh): sink, the mask's K selected tokens, window [w, p]. Dense decode
// is the case n_s = p + 1, no mask, w = p + 1. The query is rotated at its true position p.
//
// Layout: grid (split, sequence); one warp per KV head (blockDim = 32·Hkv ≤ 256, and at most
// 128 registers a thread so that two blocks share a multiprocessor: at one block, 8 warps per
// SM left it latency-bound at 20% of HBM bandwidth, measured with ncu; the g ≤ 8 instances
// keep one block per SM, as 128 registers would spill their 2·8·8 accumulators). A warp keeps the
// online softmax of the g query heads of its KV head. Each lane holds 8 consecutive components
// (one 16-byte load) of a key, so LPK = d/8 lanes share a key and a warp instruction loads
// 32/LPK keys; U such loads are in flight per iteration. The warps of a block walk the same
// positions, so the page-table and cos/sin reads of one are L1 hits for the others.
// Output: the unnormalised partial (m, l, acc[d]) of each (row, head) for the block's split,
// merged by `attn_combine` (kernels/attention.cu), m in natural-log units.

struct DecodeSeq {
    int row;             // activation row of the query (and of the output)
    int pos;             // query position p
    int page_start;      // the sequence's pages are page_ids[page_start..]
    int n_sink;          // n_s: keys [0, n_s) first (dense: p + 1)
    int window_start;    // w: the window [w, p] (dense: p + 1, empty)
    int mask;            // index of the sequence's HiP mask, or −1
    int rope_streaming;  // 1: streaming RoPE positions, 0: true positions
    int split_len;       // keys per split; splits past n_keys write empty partials
};
static_assert(sizeof(DecodeSeq) == 32, "DecodeSeq mirrors infinihip_cuda::attention::DecodeSeq");

struct DecodeParams {
    const bf16* q;              // [rows][H][d], un-rotated
    const bf16* kv;             // paged store
    const unsigned* page_ids;
    const DecodeSeq* seqs;
    const int* mask_blocks;     // [mask][max_blocks] selected block starts, ascending
    const int* mask_tokens;     // [mask][2]: number of blocks, selected tokens K
    const float* cos;
    const float* sin;
    float* part_acc;            // [(row·H + h)·max_splits + split][d]
    float* part_ml;             // [(row·H + h)·max_splits + split][2]
    int n_heads;
    int n_kv_heads;
    int n_layers;
    int layer;
    int page_size;
    int rope_half;
    int rope_adjacent;
    int max_splits;
    int max_blocks;
    int block_k;
    float scale;
    int pad;
};
static_assert(sizeof(DecodeParams) == 128, "DecodeParams mirrors infinihip_cuda::attention::DecodeParams");

// Rotates the 8 components x[0..8] = component e0 .. e0+8 of a head vector at table row `rp`.
// Adjacent pairs (2i, 2i+1) lie in one lane. Halves pairs (i, i + rope_half) lie in lanes
// rope_half/8 apart (the host checks rope_half % 8 == 0), reached with shuffles; every lane
// of the warp must call this (the shuffles are warp-wide).
__device__ __forceinline__ void rotate8(float (&x)[8], int e0, int rp, const DecodeParams& p) {
    const int half = p.rope_half;
    if (p.rope_adjacent && e0 / 2 + 4 <= half && half % 4 == 0) {
        // The lane's 4 pairs all rotate: one 16-byte load each of cos and sin.
        const float4 c = __ldg(reinterpret_cast<const float4*>(p.cos + (size_t)rp * half + e0 / 2));
        const float4 s = __ldg(reinterpret_cast<const float4*>(p.sin + (size_t)rp * half + e0 / 2));
        const float cs[4] = {c.x, c.y, c.z, c.w}, sn[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const float a = x[2 * t], b = x[2 * t + 1];
            x[2 * t] = a * cs[t] - b * sn[t];
            x[2 * t + 1] = a * sn[t] + b * cs[t];
        }
    } else if (p.rope_adjacent) {
#pragma unroll
        for (int t = 0; t < 8; t += 2) {
            const int i = (e0 + t) / 2;
            if (i < half) {
                const float c = __ldg(p.cos + (size_t)rp * half + i), s = __ldg(p.sin + (size_t)rp * half + i);
                const float a = x[t], b = x[t + 1];
                x[t] = a * c - b * s;
                x[t + 1] = a * s + b * c;
            }
        }
    } else {
        const int lane = threadIdx.x % 32;
        const int shift = half / 8;
        const bool first = e0 < half, second = !first && e0 < 2 * half;
        const int src = first ? lane + shift : (second ? lane - shift : lane);
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            const float other = __shfl_sync(0xffffffffu, x[t], src);
            if (first || second) {
                const int i = first ? e0 + t : e0 + t - half;
                const float c = __ldg(p.cos + (size_t)rp * half + i), s = __ldg(p.sin + (size_t)rp * half + i);
                x[t] = first ? x[t] * c - other * s : other * s + x[t] * c;
            }
        }
    }
}

__device__ __forceinline__ void load8(const bf16* src, float (&x)[8]) {
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        const float2 f = __bfloat1622float2(h[t]);
        x[2 * t] = f.x;
        x[2 * t + 1] = f.y;
    }
}

template <int D, int G>
__device__ __forceinline__ void decode_partial(const DecodeParams& p) {
    constexpr int LPK = D / 8;      // lanes per key
    constexpr int KPI = 32 / LPK;   // keys per warp load
    constexpr int U = 2;            // loads in flight per iteration (4 needs ~170 registers)
    constexpr int KT = KPI * U;     // keys per iteration
    constexpr float LOG2E = 1.4426950408889634f;
    constexpr float LN2 = 0.6931471805599453f;

    const DecodeSeq s = p.seqs[blockIdx.y];
    const int split = blockIdx.x;
    const int kvh = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int sub = lane / LPK, part = lane % LPK, e0 = part * 8;
    const int g = p.n_heads / p.n_kv_heads;

    int n_sel = 0;
    const int* blocks = nullptr;
    if (s.mask >= 0) {
        n_sel = p.mask_tokens[2 * s.mask + 1];
        blocks = p.mask_blocks + (size_t)s.mask * p.max_blocks;
    }
    const int n_win = max(0, s.pos - s.window_start + 1);
    const int n_keys = s.n_sink + n_sel + n_win;
    const int v0 = split * s.split_len, v1 = min(n_keys, v0 + s.split_len);
    const int rope_off = s.window_start - n_sel - s.n_sink;

    const size_t width = (size_t)p.n_kv_heads * D;
    const size_t layer_page = (size_t)p.page_size * width;
    const size_t page_elems = 2 * (size_t)p.n_layers * layer_page;
    const bf16* kv_layer = p.kv + 2 * (size_t)p.layer * layer_page + (size_t)kvh * D + e0;

    // Queries of the group, rotated at p, scaled by 1/√d · log2(e) (softmax in base 2).
    float q[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j) {
        const int h = kvh * g + min(j, g - 1);
        load8(p.q + ((size_t)s.row * p.n_heads + h) * D + e0, q[j]);
        rotate8(q[j], e0, s.pos, p);
#pragma unroll
        for (int t = 0; t < 8; ++t) q[j][t] *= p.scale * LOG2E;
    }

    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j) {
        m[j] = NEG_INF;
        l[j] = 0.f;
#pragma unroll
        for (int t = 0; t < 8; ++t) acc[j][t] = 0.f;
    }

    for (int base = v0; base < v1; base += KT) {
        float kx[U][8], vx[U][8];
        int rp[U];
        bool valid[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int v = base + u * KPI + sub;
            valid[u] = v < v1;
            int pos = 0;
            if (valid[u]) {
                pos = key_position(v, s.n_sink, n_sel, blocks, p.block_k, s.window_start);
                const size_t page = p.page_ids[s.page_start + pos / p.page_size];
                const bf16* k_row = kv_layer + page * page_elems + (size_t)(pos % p.page_size) * width;
                load8(k_row, kx[u]);
                load8(k_row + layer_page, vx[u]);
            } else {
#pragma unroll
                for (int t = 0; t < 8; ++t) kx[u][t] = vx[u][t] = 0.f;
            }
            rp[u] = s.rope_streaming ? v + rope_off : pos;
        }
        float sc[U][G];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            rotate8(kx[u], e0, valid[u] ? rp[u] : 0, p);
#pragma unroll
            for (int j = 0; j < G; ++j) {
                float d = 0.f;
#pragma unroll
                for (int t = 0; t < 8; ++t) d += q[j][t] * kx[u][t];
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                sc[u][j] = valid[u] ? d : NEG_INF;
            }
        }
#pragma unroll
        for (int j = 0; j < G; ++j) {
            float tmax = NEG_INF;
#pragma unroll
            for (int u = 0; u < U; ++u) tmax = fmaxf(tmax, sc[u][j]);
#pragma unroll
            for (int o = LPK; o < 32; o <<= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
            const float m_new = fmaxf(m[j], tmax);
            // No visible key yet: keep m = −inf and weights 0 (no NaN from −inf − −inf).
            const bool any = m_new != NEG_INF;
            const float corr = any ? exp2f(m[j] - m_new) : 1.f;
            l[j] *= corr;
#pragma unroll
            for (int t = 0; t < 8; ++t) acc[j][t] *= corr;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float w = any ? exp2f(sc[u][j] - m_new) : 0.f;
                l[j] += w;
#pragma unroll
                for (int t = 0; t < 8; ++t) acc[j][t] += w * vx[u][t];
            }
            m[j] = m_new;
        }
    }

    // Merge the KPI key slots of the warp (same m), then lanes of slot 0 write.
#pragma unroll
    for (int j = 0; j < G; ++j) {
#pragma unroll
        for (int o = LPK; o < 32; o <<= 1) {
            l[j] += __shfl_xor_sync(0xffffffffu, l[j], o);
#pragma unroll
            for (int t = 0; t < 8; ++t) acc[j][t] += __shfl_xor_sync(0xffffffffu, acc[j][t], o);
        }
        if (j < g && sub == 0) {
            const int h = kvh * g + j;
            const size_t slot = ((size_t)s.row * p.n_heads + h) * p.max_splits + split;
            float4* dst = reinterpret_cast<float4*>(p.part_acc + slot * D + e0);
            dst[0] = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
            dst[1] = make_float4(acc[j][4], acc[j][5], acc[j][6], acc[j][7]);
            if (part == 0) {
                p.part_ml[2 * slot] = m[j] == NEG_INF ? NEG_INF : m[j] * LN2;
                p.part_ml[2 * slot + 1] = l[j];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 2) decode_partial_d64_g4(const DecodeParams p) { decode_partial<64, 4>(p); }
extern "C" __global__ void __launch_bounds__(256, 1) decode_partial_d64_g8(const DecodeParams p) { decode_partial<64, 8>(p); }
extern "C" __global__ void __launch_bounds__(256, 2) decode_partial_d128_g4(const DecodeParams p) { decode_partial<128, 4>(p); }
extern "C" __global__ void __launch_bounds__(256, 1) decode_partial_d128_g8(const DecodeParams p) { decode_partial<128, 8>(p); }
