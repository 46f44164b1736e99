// Causal attention over the paged, un-rotated KV cache, with RoPE applied inside: dense, or
// HiP block-sparse over a query block's virtual key list (`key_position` in common.cuh).
//
// Oracles: the dense path of crates/engine/src/backend/cpu/attention.rs (`attention` with
// `hip[i] = None`, crates/engine/tests/gpu_ops.rs) and `infinihip_core::hip::
// block_sparse_attention` (crates/engine/tests/gpu_hip.rs).
//
// Shapes (DESIGN notation): queries `[rows][H][d]`; cache pages `[layer][K|V][slot][Hkv][d]`
// (`page_elems` = 2·n_layers·page_size·Hkv·d elements per page); GQA group g = H / Hkv, query
// head h reads KV head h / g. RoPE tables `cos`/`sin` are `[position][rope_half]` f32; pair i
// (i < rope_half) is (2i, 2i+1) for GGUF llama weights (`rope_adjacent`) or (i, i + rope_half)
// (Qwen2); components past 2·rope_half are not rotated.
//
// Flash-decoding style, one block per (work item, KV head). A work item (`AttnCta`, planned on
// the host by infinihip_cuda::attention::plan) is 64 consecutive "flat rows" f = t·g + j
// (token t of the run, head j of the group) and one split [k0, k1) of the key list. Two
// kernels (decode steps go to `decode_partial` in decode.cu where it supports the RoPE layout,
// and here otherwise):
// 1. `attn_prefill_tc_d{D}`: streams key tiles through shared memory (rotated as they are
//    loaded), keeps an online softmax per row on tensor cores, and writes the unnormalised
//    partial (m, l, acc[d]) of each row for its split;
// 2. `attn_combine`: merges the splits of each (row, head) and writes acc / l as bf16.
//
// Causality is by true position: the query at position p sees keys at positions ≤ p.
//
// A `SeqDesc` is a run of consecutive new tokens with one key list: a dense sequence's whole
// step (n_sink = window_start = its end, no mask), or one HiP query block (its sink, the
// mask's selected tokens, and its window [w, p_last]).

struct SeqDesc {
    int row_start;       // first activation row of the run's tokens
    int n_tokens;        // tokens in the run
    int pos_start;       // position of the first token
    int page_start;      // the sequence's pages are page_ids[page_start..]
    int n_sink;          // n_s of the key list (dense: the end of the step)
    int window_start;    // w (dense: the end of the step)
    int mask;            // index of the run's HiP mask in mask_blocks/mask_tokens, or −1
    int rope_streaming;  // 1: streaming RoPE positions for the keys, 0: true positions
};
static_assert(sizeof(SeqDesc) == 32, "SeqDesc mirrors infinihip_cuda::attention::SeqDesc");

struct AttnCta {
    int seq;    // index into seqs
    int f0;     // first flat row
    int k0;     // key list indices [k0, k1) of this split
    int k1;
    int split;  // index of the split among the item's splits
};
static_assert(sizeof(AttnCta) == 20, "AttnCta mirrors infinihip_cuda::attention::AttnCta");

struct AttnParams {
    const bf16* q;
    const bf16* kv;
    const unsigned* page_ids;
    const SeqDesc* seqs;
    const AttnCta* ctas;
    const float* cos;
    const float* sin;
    float* part_acc;  // [(row·H + h)·max_splits + split][d]
    float* part_ml;   // [(row·H + h)·max_splits + split][2]: running max, sum of weights
    const int* mask_blocks;  // [mask][max_blocks] selected block starts, ascending (HiP)
    const int* mask_tokens;  // [mask][2]: number of blocks, selected tokens
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
static_assert(sizeof(AttnParams) == 136, "AttnParams mirrors infinihip_cuda::attention::AttnParams");

// The two components (a, b) of pair i: rotated pairs first, then the unrotated tail in
// adjacent pairs, so that pairs 0..d/2 cover every component exactly once in either style.
__device__ __forceinline__ void pair_of(int i, int rope_half, int adjacent, int& a, int& b) {
    if (i < rope_half && !adjacent) {
        a = i;
        b = i + rope_half;
    } else {
        a = 2 * i;
        b = 2 * i + 1;
    }
}

// ---------------------------------------------------------------------------------------------
// attn_prefill_tc_d{D}: the prefill work items (64 flat rows of one run, one split of its key
// list, one KV head) on tensor cores, flash-attention 2 style. The queries (rotated, scaled by
// scale·log2 e) and each tile of KT keys (gathered through `key_position`, rotated at their RoPE
// positions) are rounded to f16 in shared memory, K and V rows moved 16 bytes a load and K
// rotated in place; the P·V fragments of V come through ldmatrix.trans. f16, not bf16: its 3
// more mantissa bits round the rotated Q and K and the weights P 8× more finely (scores are
// q·k/√d ≲ 10² and values bf16 activations, far inside f16's range). With bf16 operands the
// default model's greedy answer to "What is the capital of France?" went wrong on the H100;
// the model-level checks of tests/gpu_model.rs move within bf16 activation noise either way.
// Each of the 4 warps owns 16 rows:
// S = Q·Kᵀ and O += P·V are mma.sync m16n8k16 (f16 in, f32 accumulate), with
// the online softmax on the accumulator fragments (rows g and g + 8 of the warp's tile, held by
// the 4 lanes of a quad). Partials (m in natural-log units, l, acc) go to attn_combine as
// the split-K partials of decode.cu do.

#include <cuda_fp16.h>

__device__ __forceinline__ void mma_f16_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_f16(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
}

// 8 bf16 values as 8 f16, their 4 adjacent pairs rotated by (cos, sin) (1, 0: unrotated).
// bf16 → f16 is exact for the magnitudes of activations (f16 has 3 more mantissa bits, and a
// narrower range that keys and values stay far inside); a rotated value rounds once.
__device__ __forceinline__ uint4 bf16x8_to_f16x8(const uint4 raw, const float4 cs, const float4 sn) {
    const __nv_bfloat162* in = reinterpret_cast<const __nv_bfloat162*>(&raw);
    const float c[4] = {cs.x, cs.y, cs.z, cs.w}, s[4] = {sn.x, sn.y, sn.z, sn.w};
    uint4 out;
    unsigned* o = reinterpret_cast<unsigned*>(&out);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        const float2 f = __bfloat1622float2(in[t]);
        o[t] = pack_f16(f.x * c[t] - f.y * s[t], f.x * s[t] + f.y * c[t]);
    }
    return out;
}

// The B fragment of mma m16n8k16 for k-rows row0..row0 + 16 (keys) and n-columns col..col + 8
// of a row-major [k][n] f16 matrix in shared memory (V as [key][d]): ldmatrix transposes the
// two 8×8 blocks on the way, lanes 0–15 naming the 16 rows.
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned& b0, unsigned& b1, const __half* row) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(a));
}

template <int D>
__device__ __forceinline__ void attn_prefill_tc(const AttnParams& p) {
    constexpr int ROWS = 64, THREADS = 128;
    constexpr int KT = 32;                 // keys per tile (the fetch registers: 8 a task)
    constexpr int DP = D + 8;              // padded row: 16-byte aligned, fewer bank conflicts
    constexpr int NT = KT / 8;             // n-tiles of S per warp
    constexpr int DT = D / 8;              // n-tiles of O per warp
    constexpr float LOG2E = 1.4426950408889634f;
    constexpr float LN2 = 0.6931471805599453f;
    __shared__ __align__(16) __half sQ[ROWS][DP];
    __shared__ __align__(16) __half sK[KT][DP];
    __shared__ __align__(16) __half sV[KT][DP];
    __shared__ int sPos[KT];
    __shared__ int sRope[KT];
    __shared__ int sQpos[ROWS];

    const AttnCta c = p.ctas[blockIdx.x];
    const SeqDesc s = p.seqs[c.seq];
    const int kvh = blockIdx.y;
    const int g = p.n_heads / p.n_kv_heads;
    const int n_flat = s.n_tokens * g;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int quad = lane / 4, tq = lane % 4;
    int n_sel = 0;
    const int* blocks = nullptr;
    if (s.mask >= 0) {
        n_sel = p.mask_tokens[2 * s.mask + 1];
        blocks = p.mask_blocks + (size_t)s.mask * p.max_blocks;
    }
    const int last_flat = min(c.f0 + ROWS, n_flat) - 1;
    const int p_last = s.pos_start + last_flat / g;
    const int n_keys = min(s.n_sink, p_last + 1) + n_sel + max(0, p_last + 1 - s.window_start);
    const int key_end = min(c.k1, n_keys);
    const int rope_off = s.window_start - n_sel - s.n_sink;
    const size_t width = (size_t)p.n_kv_heads * D;
    const size_t layer_page = (size_t)p.page_size * width;
    const size_t page_elems = 2 * (size_t)p.n_layers * layer_page;

    // Queries: 64 flat rows, rotated at their positions, scaled, as f16.
    for (int task = threadIdx.x; task < ROWS * (D / 2); task += THREADS) {
        const int r = task / (D / 2), i = task % (D / 2);
        const int f = c.f0 + r;
        const bool active = f < n_flat;
        const int t = active ? f / g : 0;
        const int h = kvh * g + (active ? f % g : 0);
        const int q_pos = s.pos_start + t;
        if (i == 0) sQpos[r] = active ? q_pos : -1;
        int a, b;
        pair_of(i, p.rope_half, p.rope_adjacent, a, b);
        const bf16* src = p.q + ((size_t)(s.row_start + t) * p.n_heads + h) * D;
        float xa = active ? to_f32(src[a]) : 0.f, xb = active ? to_f32(src[b]) : 0.f;
        if (i < p.rope_half) {
            const float cs = p.cos[(size_t)q_pos * p.rope_half + i], sn = p.sin[(size_t)q_pos * p.rope_half + i];
            const float ya = xa * cs - xb * sn, yb = xa * sn + xb * cs;
            xa = ya;
            xb = yb;
        }
        const float sc = p.scale * LOG2E;
        sQ[r][a] = __float2half_rn(xa * sc);
        sQ[r][b] = __float2half_rn(xb * sc);
    }

    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    float o[DT][4];
#pragma unroll
    for (int j = 0; j < DT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    unsigned qa[D / 16][4];
    const int r0 = warp * 16 + quad;  // this lane's rows r0 and r0 + 8 of the CTA's 64

    // K and V rows move 16 bytes a task, as f16 (exact from bf16). Adjacent RoPE pairs in whole
    // quads (rope_half % 4 == 0) rotate on the way, the task's cos/sin loaded beside its K;
    // other layouts rotate in shared memory. A tile's rows are fetched into registers while the
    // previous tile is computed (`fetch`), then stored (`stash`): the loads' latency hides
    // behind the tensor-core work instead of stalling every tile between two barriers.
    constexpr int TASKS = KT * (D / 8) / THREADS;
    static_assert(KT * (D / 8) % THREADS == 0, "whole 16-byte tasks per thread");
    const bool rotate_in_loader = p.rope_adjacent && p.rope_half % 4 == 0;
    uint4 k8[TASKS], v8[TASKS];
    float4 cs[TASKS], sn[TASKS];
    int kpos[TASKS], krope[TASKS];
    auto fetch = [&](int tile) {
#pragma unroll
        for (int i = 0; i < TASKS; ++i) {
            const int task = threadIdx.x + i * THREADS;
            const int j = task / (D / 8), e0 = task % (D / 8) * 8;
            const int v = tile + j;
            const int kp = v < key_end ? key_position(v, s.n_sink, n_sel, blocks, p.block_k, s.window_start) : -1;
            kpos[i] = kp;
            krope[i] = s.rope_streaming ? v + rope_off : kp;
            k8[i] = v8[i] = make_uint4(0u, 0u, 0u, 0u);
            cs[i] = make_float4(1.f, 1.f, 1.f, 1.f);
            sn[i] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (kp >= 0) {
                const size_t page = p.page_ids[s.page_start + kp / p.page_size];
                const bf16* k_row = p.kv + page * page_elems + (2 * (size_t)p.layer) * layer_page +
                                    (size_t)(kp % p.page_size) * width + (size_t)kvh * D + e0;
                k8[i] = *reinterpret_cast<const uint4*>(k_row);
                v8[i] = *reinterpret_cast<const uint4*>(k_row + layer_page);
                if (rotate_in_loader && e0 / 2 < p.rope_half) {
                    const size_t at = (size_t)krope[i] * p.rope_half + e0 / 2;
                    cs[i] = __ldg(reinterpret_cast<const float4*>(p.cos + at));
                    sn[i] = __ldg(reinterpret_cast<const float4*>(p.sin + at));
                }
            }
        }
    };
    auto stash = [&]() {
#pragma unroll
        for (int i = 0; i < TASKS; ++i) {
            const int task = threadIdx.x + i * THREADS;
            const int j = task / (D / 8), e0 = task % (D / 8) * 8;
            *reinterpret_cast<uint4*>(&sK[j][e0]) = bf16x8_to_f16x8(k8[i], cs[i], sn[i]);
            *reinterpret_cast<uint4*>(&sV[j][e0]) =
                bf16x8_to_f16x8(v8[i], make_float4(1.f, 1.f, 1.f, 1.f), make_float4(0.f, 0.f, 0.f, 0.f));
            if (e0 == 0) {
                sPos[j] = kpos[i];
                sRope[j] = krope[i];
            }
        }
    };

    if (c.k0 < key_end) fetch(c.k0);
    for (int tile = c.k0; tile < key_end; tile += KT) {
        __syncthreads();  // the queries are written (first tile); the previous tile is consumed
        stash();
        __syncthreads();
        if (!rotate_in_loader) {
            // RoPE on K in shared memory: a warp per key, a lane per rotated pair.
            for (int j = warp; j < KT; j += THREADS / 32) {
                if (sPos[j] < 0) continue;
                const size_t row = (size_t)sRope[j] * p.rope_half;
                for (int i = lane; i < p.rope_half; i += 32) {
                    int a, b;
                    pair_of(i, p.rope_half, p.rope_adjacent, a, b);
                    const float c = __ldg(p.cos + row + i), sv = __ldg(p.sin + row + i);
                    const float ka = __half2float(sK[j][a]), kb = __half2float(sK[j][b]);
                    sK[j][a] = __float2half_rn(ka * c - kb * sv);
                    sK[j][b] = __float2half_rn(ka * sv + kb * c);
                }
            }
            __syncthreads();
        }
        if (tile + KT < key_end) fetch(tile + KT);
        if (tile == c.k0) {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                qa[kk][0] = *reinterpret_cast<const unsigned*>(&sQ[r0][kk * 16 + 2 * tq]);
                qa[kk][1] = *reinterpret_cast<const unsigned*>(&sQ[r0 + 8][kk * 16 + 2 * tq]);
                qa[kk][2] = *reinterpret_cast<const unsigned*>(&sQ[r0][kk * 16 + 8 + 2 * tq]);
                qa[kk][3] = *reinterpret_cast<const unsigned*>(&sQ[r0 + 8][kk * 16 + 8 + 2 * tq]);
            }
        }

        // S = Q·Kᵀ for the warp's 16 rows and the tile's KT keys.
        float sc[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const unsigned b0 = *reinterpret_cast<const unsigned*>(&sK[n * 8 + quad][kk * 16 + 2 * tq]);
                const unsigned b1 = *reinterpret_cast<const unsigned*>(&sK[n * 8 + quad][kk * 16 + 8 + 2 * tq]);
                mma_f16_16816(sc[n], qa[kk], b0, b1);
            }
        }
        // Causal and list masking, then the online softmax of rows r0 (e = 0) and r0 + 8 (e = 1).
        const int qp[2] = {sQpos[r0], sQpos[r0 + 8]};
        float tmax[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int n = 0; n < NT; ++n) {
#pragma unroll
            for (int x = 0; x < 4; ++x) {
                const int e = x / 2;
                const int kp = sPos[n * 8 + 2 * tq + (x & 1)];
                const bool visible = qp[e] >= 0 && kp >= 0 && kp <= qp[e];
                sc[n][x] = visible ? sc[n][x] : NEG_INF;
                tmax[e] = fmaxf(tmax[e], sc[n][x]);
            }
        }
        float corr[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            tmax[e] = fmaxf(tmax[e], __shfl_xor_sync(0xffffffffu, tmax[e], 1));
            tmax[e] = fmaxf(tmax[e], __shfl_xor_sync(0xffffffffu, tmax[e], 2));
            const float m_new = fmaxf(m[e], tmax[e]);
            corr[e] = m_new == NEG_INF ? 1.f : exp2f(m[e] - m_new);
            m[e] = m_new;
        }
        float psum[2] = {0.f, 0.f};
#pragma unroll
        for (int n = 0; n < NT; ++n) {
#pragma unroll
            for (int x = 0; x < 4; ++x) {
                const int e = x / 2;
                const float w = m[e] == NEG_INF ? 0.f : exp2f(sc[n][x] - m[e]);
                sc[n][x] = w;
                psum[e] += w;
            }
        }
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            psum[e] += __shfl_xor_sync(0xffffffffu, psum[e], 1);
            psum[e] += __shfl_xor_sync(0xffffffffu, psum[e], 2);
            l[e] = l[e] * corr[e] + psum[e];
        }
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            o[j][0] *= corr[0];
            o[j][1] *= corr[0];
            o[j][2] *= corr[1];
            o[j][3] *= corr[1];
        }
        // O += P·V: the S accumulators of n-tiles 2kk and 2kk + 1 are the A fragment of k-step kk.
#pragma unroll
        for (int kk = 0; kk < KT / 16; ++kk) {
            const unsigned pa[4] = {pack_f16(sc[2 * kk][0], sc[2 * kk][1]), pack_f16(sc[2 * kk][2], sc[2 * kk][3]),
                                    pack_f16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                                    pack_f16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
            for (int j = 0; j < DT; ++j) {
                unsigned b0, b1;
                ldmatrix_x2_trans(b0, b1, &sV[kk * 16 + lane % 16][j * 8]);
                mma_f16_16816(o[j], pa, b0, b1);
            }
        }
    }

    // Partials of rows r0 and r0 + 8: the quad's lanes hold columns 8j + 2tq, +1.
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const int f = c.f0 + r0 + 8 * e;
        if (f >= n_flat) continue;
        const int t = f / g, h = kvh * g + f % g;
        const size_t slot = ((size_t)(s.row_start + t) * p.n_heads + h) * p.max_splits + c.split;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            p.part_acc[slot * D + j * 8 + 2 * tq] = o[j][2 * e];
            p.part_acc[slot * D + j * 8 + 2 * tq + 1] = o[j][2 * e + 1];
        }
        if (tq == 0) {
            p.part_ml[2 * slot] = m[e] == NEG_INF ? NEG_INF : m[e] * LN2;
            p.part_ml[2 * slot + 1] = l[e];
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) attn_prefill_tc_d64(const AttnParams p) { attn_prefill_tc<64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_prefill_tc_d128(const AttnParams p) { attn_prefill_tc<128>(p); }

// attn_combine: out[row][h] = Σ_s e^(m_s − M)·acc_s / Σ_s e^(m_s − M)·l_s over the n_splits[row·H + h]
// splits of (row, h). Grid: one block per (row, h); block: a multiple of d threads, at most
// 1024, and n_splits ≤ COMBINE_MAX_SPLITS. The split weights are computed once into shared
// memory; then blockDim/d groups of d threads each sum a strided share of the splits (their
// loads independent, so many are in flight: HiP decode has ~200 short splits per head, and a
// serial loop over them cost more than the attention itself), merged through shared memory.
#define COMBINE_MAX_SPLITS 1024
extern "C" __global__ void attn_combine(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                        const int* __restrict__ n_splits, bf16* __restrict__ out, int max_splits,
                                        int d) {
    __shared__ float w[COMBINE_MAX_SPLITS];
    __shared__ float red[32];
    __shared__ float partial[1024];
    const size_t base = (size_t)blockIdx.x * max_splits;
    const int n = min(n_splits[blockIdx.x], COMBINE_MAX_SPLITS);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;

    float m = NEG_INF;
    for (int s = threadIdx.x; s < n; s += blockDim.x) m = fmaxf(m, part_ml[2 * (base + s)]);
    m = group_max<32>(m);
    if (lane == 0) red[warp] = m;
    __syncthreads();
    float m_all = NEG_INF;
    for (int i = 0; i < n_warps; ++i) m_all = fmaxf(m_all, red[i]);
    __syncthreads();  // red is reused below
    float l = 0.f;
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
        const float l_s = part_ml[2 * (base + s) + 1];
        // A split with no visible key (l = 0, m = −inf) weighs nothing.
        const float ws = l_s == 0.f ? 0.f : __expf(part_ml[2 * (base + s)] - m_all);
        w[s] = ws;
        l += l_s * ws;
    }
    l = group_sum<32>(l);
    if (lane == 0) red[warp] = l;
    __syncthreads();
    float l_all = 0.f;
    for (int i = 0; i < n_warps; ++i) l_all += red[i];

    const int col = threadIdx.x % d, group = threadIdx.x / d, n_groups = blockDim.x / d;
    float o = 0.f;
#pragma unroll 8
    for (int s = group; s < n; s += n_groups) o += w[s] * part_acc[(base + s) * d + col];
    partial[threadIdx.x] = o;
    __syncthreads();
    if (group == 0) {
        for (int g = 1; g < n_groups; ++g) o += partial[g * d + col];
        // Every query sees at least its own key, so l_all > 0.
        out[(size_t)blockIdx.x * d + col] = to_bf16(o / l_all);
    }
}
