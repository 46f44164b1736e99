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
// Two kernels, flash-decoding style:
// 1. `attn_partial_d{D}_r{ROWS}`: one block per (work item, KV head). A work item (`AttnCta`,
//    planned on the host by infinihip_cuda::attention::plan) is ROWS consecutive "flat rows"
//    f = t·g + j (token t of the sequence's step, head j of the group) and one split [k0, k1)
//    of the key list. It streams key tiles through shared memory (rotated as they are
//    loaded), keeps an online softmax per row, and writes the unnormalised partial
//    (m, l, acc[d]) of each row for its split. ROWS = 4 serves decode steps (one token, one
//    warp per row), ROWS = 16 prefill chunks (8 lanes per row).
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

template <int D, int ROWS>
__device__ __forceinline__ void attn_partial(const AttnParams& p) {
    constexpr int THREADS = 128;
    constexpr int LANES = THREADS / ROWS;  // threads per flat row
    constexpr int KT = 4096 / D;           // keys per shared-memory tile
    constexpr int SPL = KT / LANES;        // scores per lane per tile
    constexpr int CPL = D / LANES;         // output components per lane
    static_assert(SPL >= 1 && CPL >= 1 && KT % LANES == 0 && D % LANES == 0, "tile shape");

    __shared__ float sQ[ROWS][D + 1];  // +1: rows of one warp fall in different banks
    __shared__ float sK[KT][D + 1];
    __shared__ float sV[KT][D];
    __shared__ float sP[ROWS][KT];
    __shared__ int sPos[KT];  // the tile's key positions (−1 past the list) and RoPE rows
    __shared__ int sRope[KT];

    const AttnCta c = p.ctas[blockIdx.x];
    const SeqDesc s = p.seqs[c.seq];
    const int kvh = blockIdx.y;
    const int g = p.n_heads / p.n_kv_heads;
    const int n_flat = s.n_tokens * g;
    const int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    const int f = c.f0 + r;
    const bool active = f < n_flat;
    const int t = active ? f / g : 0;
    const int h = kvh * g + (active ? f % g : 0);
    const int q_pos = s.pos_start + t;
    const int row = s.row_start + t;
    int n_sel = 0;
    const int* blocks = nullptr;
    if (s.mask >= 0) {
        n_sel = p.mask_tokens[2 * s.mask + 1];
        blocks = p.mask_blocks + (size_t)s.mask * p.max_blocks;
    }
    // Keys any row of the block may see: the list up to its last token's position.
    const int last_flat = min(c.f0 + ROWS, n_flat) - 1;
    const int p_last = s.pos_start + last_flat / g;
    const int n_keys = min(s.n_sink, p_last + 1) + n_sel + max(0, p_last + 1 - s.window_start);
    const int key_end = min(c.k1, n_keys);
    const int rope_off = s.window_start - n_sel - s.n_sink;

    const size_t width = (size_t)p.n_kv_heads * D;
    const size_t layer_page = (size_t)p.page_size * width;
    const size_t page_elems = 2 * (size_t)p.n_layers * layer_page;

    // The query row, rotated at its position and scaled.
    {
        const bf16* src = p.q + ((size_t)row * p.n_heads + h) * D;
        for (int i = lane; i < D / 2; i += LANES) {
            int a, b;
            pair_of(i, p.rope_half, p.rope_adjacent, a, b);
            float xa = active ? to_f32(src[a]) : 0.f, xb = active ? to_f32(src[b]) : 0.f;
            if (i < p.rope_half) {
                const float cs = p.cos[(size_t)q_pos * p.rope_half + i], sn = p.sin[(size_t)q_pos * p.rope_half + i];
                const float ya = xa * cs - xb * sn, yb = xa * sn + xb * cs;
                xa = ya;
                xb = yb;
            }
            sQ[r][a] = xa * p.scale;
            sQ[r][b] = xb * p.scale;
        }
    }

    float m = NEG_INF, l = 0.f;
    float acc[CPL];
#pragma unroll
    for (int cc = 0; cc < CPL; ++cc) acc[cc] = 0.f;

    for (int tile = c.k0; tile < key_end; tile += KT) {
        __syncthreads();  // sQ is written (first tile); the previous tile is consumed (later ones)
        for (int j = threadIdx.x; j < KT; j += THREADS) {
            const int v = tile + j;
            const int kp = v < key_end ? key_position(v, s.n_sink, n_sel, blocks, p.block_k, s.window_start) : -1;
            sPos[j] = kp;
            sRope[j] = s.rope_streaming ? v + rope_off : kp;
        }
        __syncthreads();
        for (int task = threadIdx.x; task < KT * (D / 2); task += THREADS) {
            const int j = task / (D / 2), i = task % (D / 2);
            const int kp = sPos[j];
            int a, b;
            pair_of(i, p.rope_half, p.rope_adjacent, a, b);
            float ka = 0.f, kb = 0.f, va = 0.f, vb = 0.f;
            if (kp >= 0) {
                const size_t page = p.page_ids[s.page_start + kp / p.page_size];
                const bf16* k_row =
                    p.kv + page * page_elems + (2 * (size_t)p.layer) * layer_page + (size_t)(kp % p.page_size) * width + (size_t)kvh * D;
                const bf16* v_row = k_row + layer_page;
                ka = to_f32(k_row[a]);
                kb = to_f32(k_row[b]);
                va = to_f32(v_row[a]);
                vb = to_f32(v_row[b]);
                if (i < p.rope_half) {
                    const size_t rp = (size_t)sRope[j] * p.rope_half + i;
                    const float cs = p.cos[rp], sn = p.sin[rp];
                    const float ya = ka * cs - kb * sn, yb = ka * sn + kb * cs;
                    ka = ya;
                    kb = yb;
                }
            }
            sK[j][a] = ka;
            sK[j][b] = kb;
            sV[j][a] = va;
            sV[j][b] = vb;
        }
        __syncthreads();

        float score[SPL];
        float tile_max = NEG_INF;
#pragma unroll
        for (int jj = 0; jj < SPL; ++jj) {
            const int j = lane + jj * LANES;
            const int kp = sPos[j];
            float dot = 0.f;
#pragma unroll 16
            for (int e = 0; e < D; ++e) dot += sQ[r][e] * sK[j][e];
            const bool visible = active && kp >= 0 && kp <= q_pos;
            score[jj] = visible ? dot : NEG_INF;
            tile_max = fmaxf(tile_max, score[jj]);
        }
        tile_max = group_max<LANES>(tile_max);
        const float m_new = fmaxf(m, tile_max);
        // A row that has seen no visible key yet keeps m = -inf and weights 0 (no NaN from
        // -inf - -inf).
        const bool any = m_new != NEG_INF;
        const float correction = any ? __expf(m - m_new) : 1.f;
        float p_sum = 0.f;
#pragma unroll
        for (int jj = 0; jj < SPL; ++jj) {
            const float w = any ? __expf(score[jj] - m_new) : 0.f;
            sP[r][lane + jj * LANES] = w;
            p_sum += w;
        }
        p_sum = group_sum<LANES>(p_sum);
        l = l * correction + p_sum;
        m = m_new;
        __syncwarp();  // a row's lanes share one warp: its weights are visible to all of them
#pragma unroll
        for (int cc = 0; cc < CPL; ++cc) {
            const int col = lane + cc * LANES;
            float a = acc[cc] * correction;
#pragma unroll 8
            for (int j = 0; j < KT; ++j) a += sP[r][j] * sV[j][col];
            acc[cc] = a;
        }
    }

    if (active) {
        const size_t slot = ((size_t)row * p.n_heads + h) * p.max_splits + c.split;
#pragma unroll
        for (int cc = 0; cc < CPL; ++cc) p.part_acc[slot * D + lane + cc * LANES] = acc[cc];
        if (lane == 0) {
            p.part_ml[2 * slot] = m;
            p.part_ml[2 * slot + 1] = l;
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) attn_partial_d64_r4(const AttnParams p) { attn_partial<64, 4>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_partial_d64_r16(const AttnParams p) { attn_partial<64, 16>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_partial_d128_r4(const AttnParams p) { attn_partial<128, 4>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_partial_d128_r16(const AttnParams p) { attn_partial<128, 16>(p); }

// attn_combine: out[row][h] = Σ_s e^(m_s − M)·acc_s / Σ_s e^(m_s − M)·l_s over the n_splits[row·H + h]
// splits of (row, h). Grid: one block per (row, h); block: a multiple of d threads, at most
// 1024, and n_splits ≤ COMBINE_MAX_SPLITS. The split weights are computed once into shared
// memory; then blockDim/d groups of d threads each sum a strided share of the splits (their
// loads independent, so many are in flight: HiP decode has ~200 short splits per head, and a
// serial loop over them cost more than the attention itself), merged through shared memory.
#define COMBINE_MAX_SPLITS 256
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
