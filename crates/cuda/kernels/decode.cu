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
// Layout: grid (split, sequence); one warp per KV head (blockDim = 32·Hkv ≤ 256). A warp keeps
// the online softmax of the g query heads of its KV head. Each lane holds 8 consecutive
// components (16 bytes) of a key, so LPK = d/8 lanes share a key and a stage covers 32/LPK
// keys. The KV streams through a per-warp cp.async ring in shared memory, DECODE_STAGES − 1
// stages in flight while one is computed: the previous version loaded into registers, two
// loads in flight a warp, and was latency-bound at 41% of HBM bandwidth (3.4 ms
// for 1M keys of Llama-3.1-8B against 1.4 ms for PyTorch's SDPA). Each lane reads back only
// the slots it filled, so `cp.async.wait_group` is the only synchronisation. The warps of a
// block walk the same positions, so the page-table and cos/sin reads of one are L1 hits for
// the others.
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

// Rotates the 4 adjacent pairs of x[0..8] by the angles whose cosines are c and sines s.
__device__ __forceinline__ void rotate_quad(float (&x)[8], const float4 c, const float4 s) {
    const float cs[4] = {c.x, c.y, c.z, c.w}, sn[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        const float a = x[2 * t], b = x[2 * t + 1];
        x[2 * t] = a * cs[t] - b * sn[t];
        x[2 * t + 1] = a * sn[t] + b * cs[t];
    }
}

// Rotates the 8 components x[0..8] = component e0 .. e0+8 of a head vector at table row `rp`.
// Adjacent pairs (2i, 2i+1) lie in one lane. Halves pairs (i, i + rope_half) lie in lanes
// rope_half/8 apart (the host checks rope_half % 8 == 0), reached with shuffles; every lane
// of the warp must call this (the shuffles are warp-wide).
__device__ __forceinline__ void rotate8(float (&x)[8], int e0, int rp, const DecodeParams& p) {
    const int half = p.rope_half;
    if (p.rope_adjacent && e0 / 2 + 4 <= half && half % 4 == 0) {
        // The lane's 4 pairs all rotate: one 16-byte load each of cos and sin.
        rotate_quad(x, __ldg(reinterpret_cast<const float4*>(p.cos + (size_t)rp * half + e0 / 2)),
                    __ldg(reinterpret_cast<const float4*>(p.sin + (size_t)rp * half + e0 / 2)));
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


// cp.async (sm_80+): 16 bytes from global to shared memory without passing through registers;
// `bytes` = 0 writes zeros (a key past the split's end). `.cg` streams the KV (read once);
// `.ca` keeps the RoPE rows in L1, where the block's other warps (same positions) find them.
__device__ __forceinline__ void cp_async_cg16(void* dst, const void* src, int bytes) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_ca16(void* dst, const void* src) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void unpack8(const uint4 raw, float (&x)[8]) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        const float2 f = __bfloat1622float2(h[t]);
        x[2 * t] = f.x;
        x[2 * t + 1] = f.y;
    }
}

__device__ __forceinline__ void load8(const bf16* src, float (&x)[8]) {
    unpack8(*reinterpret_cast<const uint4*>(src), x);
}

// The G query heads' dot products with a key, each a partial sum in each of the key's LPK
// lanes, summed over the lanes with the halving exchange: at each step a lane sends half of
// the heads it holds and keeps the other half, so after log2(G) steps it holds one head
// (`head_of_lane`) and the last steps are a plain sum. 2·(G − 1)/… shuffles in place of
// G·log2(LPK): 5 instead of 16 for Llama-3.1-8B's G = 4, LPK = 16. Returns the lane's head's
// full dot product. G ≤ LPK, both powers of two.
template <int G, int LPK>
__device__ __forceinline__ float reduce_heads(float (&v)[G], int part) {
    int n = G;
#pragma unroll
    for (int o = LPK / 2; o > 0; o >>= 1) {
        if (n > 1) {
            const bool upper = part & o;
            n /= 2;
#pragma unroll
            for (int i = 0; i < G / 2; ++i) {
                if (i < n) {
                    const float send = upper ? v[i] : v[i + n];
                    const float keep = upper ? v[i + n] : v[i];
                    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
                }
            }
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
        }
    }
    return v[0];
}

// The head that `reduce_heads` leaves in lane `part` of a key's lanes (upper halves take the
// upper heads), and the first lane holding head j.
template <int G, int LPK>
__device__ __forceinline__ int head_of_lane(int part) {
    return part / (LPK / G);
}
template <int G, int LPK>
__device__ __forceinline__ int lane_of_head(int j) {
    return j * (LPK / G);
}

// Stages of the cp.async ring: STAGES − 1 are in flight while one is computed. Shared memory
// per block: Hkv warps · STAGES · 2 KiB (96 KiB at 8 KV heads, so two blocks share an SM).
#define DECODE_STAGES 6
// Per lane and stage, 16 bytes each of: K, V, and (adjacent RoPE) the 4 cos and 4 sin values.
#define DECODE_FIELDS 4

// RING_ROPE: adjacent RoPE pairs in whole quads (rope_half % 4 == 0; the host checks), the
// lane's cos/sin staged in the ring with its key. Otherwise (halves RoPE, odd partial
// rotations) each key's RoPE row is looked up again when it is rotated: a separate instance,
// since that path's registers pushed the common one past 128 and made it spill.
template <int D, int G, bool RING_ROPE>
__device__ __forceinline__ void decode_partial(const DecodeParams& p) {
    constexpr int LPK = D / 8;       // lanes per key
    constexpr int KPI = 32 / LPK;    // keys per stage (one 16-byte load per lane)
    constexpr int SPB = 32 / KPI;    // stages per batch of 32 resolved keys (one per lane)
    constexpr int S = DECODE_STAGES;
    constexpr float LOG2E = 1.4426950408889634f;
    constexpr float LN2 = 0.6931471805599453f;
    extern __shared__ uint4 ring[];  // [warp][stage][field][lane]

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
    const int n_stages = v1 > v0 ? (v1 - v0 + KPI - 1) / KPI : 0;

    // Strides in 32 bits (registers are what this kernel runs short of): a row (Hkv·d values)
    // in 16-byte units, a layer's K (or V) of a page in 16-byte units, a page in rows.
    const unsigned row16 = p.n_kv_heads * D / 8;
    const unsigned layer_page16 = p.page_size * row16;
    const unsigned page_rows = 2 * p.n_layers * p.page_size;
    const uint4* kv_layer =
        reinterpret_cast<const uint4*>(p.kv + 2 * (size_t)p.layer * layer_page16 * 8 + (size_t)kvh * D + e0);
    // The lane's 4 rotated pairs (all or none of them rotate: half % 4 == 0) read one float4
    // each of cos and sin.
    const int half = p.rope_half;
    const bool staged_rope = RING_ROPE && e0 / 2 < half;
    uint4* my_ring = ring + (size_t)kvh * S * DECODE_FIELDS * 32 + lane;

    // Key addresses are resolved 32 at a time, lane j holding key `base + j` (the offset of its
    // row in the store, in rows of Hkv·d values, and its RoPE row), one batch ahead of the stages that
    // issue its loads, so the index loads (mask blocks, page table) overlap the KV stream
    // instead of preceding each load.
    auto resolve = [&](int base, unsigned& off, int& rp) {
        const int v = base + lane;
        off = 0;
        rp = 0;
        if (v < v1) {
            const int pos = key_position(v, s.n_sink, n_sel, blocks, p.block_k, s.window_start);
            off = p.page_ids[s.page_start + pos / p.page_size] * page_rows + pos % p.page_size;
            rp = s.rope_streaming ? v + rope_off : pos;
        }
    };
    unsigned cur_off, nxt_off;
    int cur_rp, nxt_rp;
    resolve(v0, cur_off, cur_rp);
    resolve(v0 + 32, nxt_off, nxt_rp);

    // Issues stage t's copies into ring slot t mod S, then commits a group (empty past the end,
    // so that the group count per iteration is uniform).
    auto issue = [&](int t) {
        if (t < n_stages) {
            const int within = t % SPB;
            if (within == 0 && t > 0) {
                cur_off = nxt_off;
                cur_rp = nxt_rp;
                resolve(v0 + (t / SPB + 1) * 32, nxt_off, nxt_rp);
            }
            const int src = within * KPI + sub;
            const unsigned off = __shfl_sync(0xffffffffu, cur_off, src);
            const int rp = __shfl_sync(0xffffffffu, cur_rp, src);
            const bool valid = v0 + t * KPI + sub < v1;
            const uint4* k_row = kv_layer + (size_t)off * row16;
            uint4* slot = my_ring + (size_t)(t % S) * DECODE_FIELDS * 32;
            cp_async_cg16(slot, k_row, valid ? 16 : 0);
            cp_async_cg16(slot + 32, k_row + layer_page16, valid ? 16 : 0);
            if (staged_rope) {
                cp_async_ca16(slot + 64, p.cos + (size_t)rp * half + e0 / 2);
                cp_async_ca16(slot + 96, p.sin + (size_t)rp * half + e0 / 2);
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int t = 0; t < S - 1; ++t) issue(t);

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

    // The running maximum and weight sum are kept for one head a lane, `head` (see
    // `reduce_heads`); acc for all G heads of the lane's components.
    float m = NEG_INF, l = 0.f, acc[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j) {
#pragma unroll
        for (int t = 0; t < 8; ++t) acc[j][t] = 0.f;
    }
    const int head = head_of_lane<G, LPK>(part);

    for (int t = 0; t < n_stages; ++t) {
        issue(t + S - 1);
        cp_async_wait<S - 1>();  // stage t's group has landed (this lane's own copies)
        const uint4* slot = my_ring + (size_t)(t % S) * DECODE_FIELDS * 32;
        const bool valid = v0 + t * KPI + sub < v1;
        float kx[8], vx[8];
        unpack8(slot[0], kx);
        unpack8(slot[32], vx);
        if (staged_rope) {
            rotate_quad(kx, *reinterpret_cast<const float4*>(slot + 64), *reinterpret_cast<const float4*>(slot + 96));
        } else if (!RING_ROPE) {
            // Shuffles inside for halves RoPE: the whole warp calls it.
            const int v = v0 + t * KPI + sub;
            int rp = 0;
            if (valid) rp = s.rope_streaming ? v + rope_off : key_position(v, s.n_sink, n_sel, blocks, p.block_k, s.window_start);
            rotate8(kx, e0, rp, p);
        }
        float dots[G];
#pragma unroll
        for (int j = 0; j < G; ++j) {
            dots[j] = 0.f;
#pragma unroll
            for (int u = 0; u < 8; ++u) dots[j] += q[j][u] * kx[u];
        }
        // Every lane takes part in the exchange (its shuffles name the whole warp), valid or not.
        const float dot = reduce_heads<G, LPK>(dots, part);
        const float sc = valid ? dot : NEG_INF;
        float tmax = sc;
#pragma unroll
        for (int o = LPK; o < 32; o <<= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
        // Rescale only when a running maximum grows (after the first keys, rarely). No visible
        // key yet keeps m = −inf and weights 0.
        const bool grows = tmax > m;
        const float corr = grows ? exp2f(m - tmax) : 1.f;
        if (grows) m = tmax;
        const float w = valid ? exp2f(sc - m) : 0.f;
        l = l * corr + w;
        const int slot0 = sub * LPK;
        if (__any_sync(0xffffffffu, grows)) {
#pragma unroll
            for (int j = 0; j < G; ++j) {
                const float c = __shfl_sync(0xffffffffu, corr, slot0 + lane_of_head<G, LPK>(j));
#pragma unroll
                for (int u = 0; u < 8; ++u) acc[j][u] *= c;
            }
        }
#pragma unroll
        for (int j = 0; j < G; ++j) {
            const float wj = __shfl_sync(0xffffffffu, w, slot0 + lane_of_head<G, LPK>(j));
#pragma unroll
            for (int u = 0; u < 8; ++u) acc[j][u] += wj * vx[u];
        }
    }
    cp_async_wait<0>();  // no copy outlives the block

    // Merge the KPI key slots of the warp (same m), then lanes of slot 0 write: every lane its
    // share of acc, and the first lane of each head its m and l.
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
#pragma unroll
    for (int j = 0; j < G; ++j) {
#pragma unroll
        for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
            for (int t = 0; t < 8; ++t) acc[j][t] += __shfl_xor_sync(0xffffffffu, acc[j][t], o);
        }
        if (j < g && sub == 0) {
            const size_t slot = ((size_t)s.row * p.n_heads + kvh * g + j) * p.max_splits + split;
            float4* dst = reinterpret_cast<float4*>(p.part_acc + slot * D + e0);
            dst[0] = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
            dst[1] = make_float4(acc[j][4], acc[j][5], acc[j][6], acc[j][7]);
        }
    }
    if (head < g && sub == 0 && part == lane_of_head<G, LPK>(head)) {
        const size_t slot = ((size_t)s.row * p.n_heads + kvh * g + head) * p.max_splits + split;
        p.part_ml[2 * slot] = m == NEG_INF ? NEG_INF : m * LN2;
        p.part_ml[2 * slot + 1] = l;
    }
}

#define DECODE_INSTANCE(NAME, D, G, BLOCKS, RING)                                                       \
    extern "C" __global__ void __launch_bounds__(256, BLOCKS) NAME(const DecodeParams p) { \
        decode_partial<D, G, RING>(p);                                                     \
    }
DECODE_INSTANCE(decode_partial_d64_g4, 64, 4, 2, true)
DECODE_INSTANCE(decode_partial_d64_g8, 64, 8, 1, true)
DECODE_INSTANCE(decode_partial_d128_g4, 128, 4, 2, true)
DECODE_INSTANCE(decode_partial_d128_g8, 128, 8, 1, true)
DECODE_INSTANCE(decode_partial_d64_g4_rope_lookup, 64, 4, 2, false)
DECODE_INSTANCE(decode_partial_d64_g8_rope_lookup, 64, 8, 1, false)
DECODE_INSTANCE(decode_partial_d128_g4_rope_lookup, 128, 4, 2, false)
DECODE_INSTANCE(decode_partial_d128_g8_rope_lookup, 128, 8, 1, false)
