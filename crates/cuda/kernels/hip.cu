// HiP mask estimation (DESIGN.md §4.2): one pruning stage = `hip_pool_queries` (the block's
// queries rotated at their pruning positions and averaged into scoring rows), then
// `hip_stage_scores` (every candidate chunk scored by the descent), then `hip_topk` (the best
// chunks kept, on the device, sorted by start for the next stage). An entry (`HipSeq`) is one
// query block: a decode step's single query, or b_q consecutive queries of a prefill chunk.
//
// Oracle: `infinihip_core::hip::{run_stage, estimate_mask}` (crates/engine/tests/gpu_hip.rs).
// The scores are computed bit for bit as the CPU computes them, so the masks are equal, not
// merely close: every product and sum is rounded separately (__fmul_rn/__fadd_rn, no FMA
// contraction), rotations use the CPU's formulas and f32 cos/sin table, and dot products sum
// in the CPU's order (8 lanes i ≡ j mod 8 in index order, then the lanes 0..8). Ties follow
// the CPU: in the descent equal probes keep the left half; in the top-k a higher score ranks
// first and equal scores rank the lower chunk start first (−0 and +0 are equal).
//
// Candidates of a stage, in ascending start order, index i:
//   stage 0:  start = n_sink + i·l_c, for i < ceil((w − n_sink) / l_c);
//   stage s:  start = prev[i / r] + (i % r)·l_c with r = l_{s−1} / l_c, kept if start < w;
// each chunk is [start, min(start + l_c, w)). `hip_stage_scores` writes, per candidate, its
// start and a 64-bit rank key (orderable score << 32 | ~i), or 0 for no candidate, so that
// `hip_topk` selects the n largest keys with one exact radix select.

struct HipSeq {
    int row;         // activation row of the block's first query
    int pos;         // position of the block's first query
    int page_start;  // the sequence's pages are page_ids[page_start..]
    int window_end;  // w: candidates lie in [n_sink, w)
    int n_q;         // queries in the block (rows row .. row + n_q, positions pos ..)
    int strategy;    // pruning RoPE: 0 relative, 1 chunk-indexed, 2 plain (PruningRope)
    int pad0;
    int pad1;
};
static_assert(sizeof(HipSeq) == 32, "HipSeq mirrors infinihip_cuda::hip::HipSeq");

struct HipStageParams {
    const bf16* q;             // [rows][H][d], un-rotated
    const bf16* kv;            // paged store
    const unsigned* page_ids;
    const HipSeq* seqs;
    const float* cos;
    const float* sin;
    const int* prev_starts;    // [seq][prev_stride] kept starts of the previous stage
    const int* prev_counts;    // [seq][2]: kept chunks, their tokens
    unsigned long long* keys;  // [seq][max_cand] out
    int* starts;               // [seq][max_cand] out
    float* rows;               // [seq][d][max_rows·H]: scoring rows (hip_pool_queries writes)
    int n_heads;
    int n_kv_heads;
    int n_layers;
    int layer;
    int page_size;
    int rope_half;
    int rope_adjacent;
    int n_sink;
    int n_window;
    int chunk_size;            // l_c of this stage
    int ratio;                 // l_{s−1} / l_c, 0 for stage 0
    int prev_stride;
    int max_cand;
    int head_dim;
    int query_group;           // queries averaged into one scoring row
    int max_rows;              // scoring rows per entry at most: ceil(max n_q / query_group)
};
static_assert(sizeof(HipStageParams) == 152, "HipStageParams mirrors infinihip_cuda::hip::HipStageParams");

// Warps per block of `hip_stage_scores`: each scores one candidate at a time.
#define HIP_WARPS 2

// Rotates head vector `x` (d values, f32) in place at table row `row`, as
// infinihip_core::rope::rotate_into does, bit for bit. `lane`/`step` split the pairs.
__device__ __forceinline__ void rotate_exact(float* x, int d, int row, const HipStageParams& p, int lane, int step) {
    const int half = p.rope_half;
    const float* c = p.cos + (size_t)row * half;
    const float* s = p.sin + (size_t)row * half;
    for (int i = lane; i < half; i += step) {
        const int a = p.rope_adjacent ? 2 * i : i;
        const int b = p.rope_adjacent ? 2 * i + 1 : i + half;
        const float xa = x[a], xb = x[b], ci = c[i], si = s[i];
        x[a] = __fsub_rn(__fmul_rn(xa, ci), __fmul_rn(xb, si));
        x[b] = __fadd_rn(__fmul_rn(xa, si), __fmul_rn(xb, ci));
    }
}

// The CPU's `dot` of a scoring row (component e at a[e·stride]) with a key: 8 lanes over
// i ≡ j (mod 8) in index order, the lanes summed 0..8, then the tail of d % 8 terms.
__device__ __forceinline__ float dot_exact_strided(const float* a, int stride, const float* b, int d) {
    float lanes[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) lanes[j] = 0.f;
    const int n8 = d / 8 * 8;
    for (int m = 0; m < n8; m += 8) {
#pragma unroll
        for (int j = 0; j < 8; ++j) lanes[j] = __fadd_rn(lanes[j], __fmul_rn(a[(size_t)(m + j) * stride], b[m + j]));
    }
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) sum = __fadd_rn(sum, lanes[j]);
    for (int i = n8; i < d; ++i) sum = __fadd_rn(sum, __fmul_rn(a[(size_t)i * stride], b[i]));
    return sum;
}

// The pruning position of a query at `q_pos` (PruningPositions::query).
__device__ __forceinline__ int pruning_query_pos(int strategy, int q_pos, int n_grid, int n_window) {
    if (strategy == 0) return n_window + 1;
    if (strategy == 1) return min(q_pos, n_grid + n_window);
    return q_pos;
}

// hip_pool_queries: scoring row r of entry blockIdx.x (QueryRows of the CPU): the mean over
// queries r·qg .. min((r+1)·qg, n_q) of each head's query rotated at its pruning position,
// scaled by 1/√d, summed in query order and weighted once, as the CPU does. Grid: (entries,
// max_rows); block: 128 threads over (head, pair).
extern "C" __global__ void hip_pool_queries(const HipStageParams p) {
    const HipSeq s = p.seqs[blockIdx.x];
    const int r = blockIdx.y, d = p.head_dim, qg = p.query_group;
    const int n_rows = (s.n_q + qg - 1) / qg;
    if (r >= n_rows) return;
    const int t0 = r * qg, t1 = min(s.n_q, t0 + qg);
    const int l_c = p.chunk_size, w = s.window_end;
    const int n_grid = w > p.n_sink ? (w - p.n_sink + l_c - 1) / l_c : 0;
    const float weight = __fdiv_rn(1.0f, __fmul_rn((float)(t1 - t0), __fsqrt_rn((float)d)));
    const int rh = p.max_rows * p.n_heads;
    float* out = p.rows + (size_t)blockIdx.x * d * rh;
    for (int task = threadIdx.x; task < p.n_heads * (d / 2); task += blockDim.x) {
        const int h = task / (d / 2), i = task % (d / 2);
        const int a = (i < p.rope_half && !p.rope_adjacent) ? i : 2 * i;
        const int b = (i < p.rope_half && !p.rope_adjacent) ? i + p.rope_half : 2 * i + 1;
        float sa = 0.f, sb = 0.f;
        for (int t = t0; t < t1; ++t) {
            const bf16* q = p.q + ((size_t)(s.row + t) * p.n_heads + h) * d;
            float xa = to_f32(q[a]), xb = to_f32(q[b]);
            if (i < p.rope_half) {
                const int row = pruning_query_pos(s.strategy, s.pos + t, n_grid, p.n_window);
                const float c = p.cos[(size_t)row * p.rope_half + i], sn = p.sin[(size_t)row * p.rope_half + i];
                const float ya = __fsub_rn(__fmul_rn(xa, c), __fmul_rn(xb, sn));
                const float yb = __fadd_rn(__fmul_rn(xa, sn), __fmul_rn(xb, c));
                xa = ya;
                xb = yb;
            }
            sa = __fadd_rn(sa, xa);
            sb = __fadd_rn(sb, xb);
        }
        out[(size_t)a * rh + r * p.n_heads + h] = __fmul_rn(sa, weight);
        out[(size_t)b * rh + r * p.n_heads + h] = __fmul_rn(sb, weight);
    }
}

// One probe: max over the entry's scoring rows and heads of row · RoPE(key at `key_pos`,
// rotated at `rope_pos`). The warp stages the rotated key of every KV head in `sk`
// ([Hkv][d + 1]), then the lanes score the (row, head) pairs.
__device__ float probe(const HipStageParams& p, const HipSeq& s, const float* sq, float* sk, int key_pos, int rope_pos) {
    const int lane = threadIdx.x % 32;
    const int d = p.head_dim, ds = d + 1;
    const size_t width = (size_t)p.n_kv_heads * d;
    const size_t layer_page = (size_t)p.page_size * width;
    const size_t page = p.page_ids[s.page_start + key_pos / p.page_size];
    const bf16* k_row = p.kv + page * 2 * (size_t)p.n_layers * layer_page + 2 * (size_t)p.layer * layer_page +
                        (size_t)(key_pos % p.page_size) * width;
    __syncwarp();  // the previous probe's readers are done with sk
    // 16-byte loads: 8 components of one head per lane (d is a multiple of 8).
    for (int e = lane * 8; e < (int)width; e += 256) {
        const uint4 raw = *reinterpret_cast<const uint4*>(k_row + e);
        const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
        float* dst = sk + (e / d) * ds + e % d;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const float2 f = __bfloat1622float2(h2[t]);
            dst[2 * t] = f.x;
            dst[2 * t + 1] = f.y;
        }
    }
    __syncwarp();
    for (int kvh = 0; kvh < p.n_kv_heads; ++kvh) rotate_exact(sk + kvh * ds, d, rope_pos, p, lane, 32);
    __syncwarp();
    const int g = p.n_heads / p.n_kv_heads;
    const int n_pairs = (s.n_q + p.query_group - 1) / p.query_group * p.n_heads;
    const int rh = p.max_rows * p.n_heads;
    float best = NEG_INF;
    for (int x = lane; x < n_pairs; x += 32) best = fmaxf(best, dot_exact_strided(sq + x, rh, sk + (x % p.n_heads / g) * ds, d));
    return group_max<32>(best);
}

__device__ __forceinline__ unsigned orderable(float f) {
    const unsigned bits = __float_as_uint(f + 0.0f);  // −0 → +0: equal scores rank by start
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Grid: (ceil(max_cand / HIP_WARPS), sequences); block: 32·HIP_WARPS threads; dynamic shared
// memory: HIP_WARPS·Hkv·(d+1) floats. The scoring rows come from `hip_pool_queries`.
extern "C" __global__ void hip_stage_scores(const HipStageParams p) {
    extern __shared__ float smem[];
    const HipSeq s = p.seqs[blockIdx.y];
    const int d = p.head_dim, ds = d + 1;
    const float* sq = p.rows + (size_t)blockIdx.y * d * p.max_rows * p.n_heads;
    float* sk = smem + (threadIdx.x / 32) * p.n_kv_heads * ds;
    const int l_c = p.chunk_size, w = s.window_end;
    const int n_grid = w > p.n_sink ? (w - p.n_sink + l_c - 1) / l_c : 0;  // chunks of the stage's whole grid

    const int i = blockIdx.x * HIP_WARPS + threadIdx.x / 32;
    if (i >= p.max_cand) return;
    int start = -1;
    if (p.ratio == 0) {
        if (i < n_grid) start = p.n_sink + i * l_c;
    } else {
        const int parent = i / p.ratio;
        if (parent < p.prev_counts[2 * blockIdx.y]) {
            const int st = p.prev_starts[(size_t)blockIdx.y * p.prev_stride + parent] + (i % p.ratio) * l_c;
            if (st < w) start = st;
        }
    }
    unsigned long long key = 0;
    if (start >= 0) {
        // The descent of DESIGN.md §4.2 step 2 over [start, min(start + l_c, w)).
        const int chunk_rope = (start - p.n_sink) / l_c;
        int l = start, r = min(start + l_c, w);
        float best;
        if (r - l == 1) {
            best = probe(p, s, sq, sk, l, s.strategy == 0 ? 0 : (s.strategy == 1 ? chunk_rope : l));
        } else {
            best = NEG_INF;
            while (r - l > 1) {
                const int c = l + (r - l) / 2;
                const int kl = l + (c - l) / 2, kr = c + (r - c) / 2;
                const float left = probe(p, s, sq, sk, kl, s.strategy == 0 ? 0 : (s.strategy == 1 ? chunk_rope : kl));
                const float right = probe(p, s, sq, sk, kr, s.strategy == 0 ? 1 : (s.strategy == 1 ? chunk_rope : kr));
                best = fmaxf(fmaxf(best, left), right);
                if (right > left) {
                    l = c;
                } else {
                    r = c;
                }
            }
        }
        key = ((unsigned long long)orderable(best) << 32) | (unsigned long long)(0xffffffffu - (unsigned)i);
    }
    if (threadIdx.x % 32 == 0) {
        p.keys[(size_t)blockIdx.y * p.max_cand + i] = key;
        p.starts[(size_t)blockIdx.y * p.max_cand + i] = start;
    }
}

// hip_topk: per sequence (one block of 1024 threads), keeps the n_keep candidates with the
// largest keys (all valid ones when there are fewer), writes their starts in ascending order
// to out[seq][out_stride] and (count, tokens) to counts[seq][2], tokens = Σ min(l_c, w − start).
// Thread t owns the contiguous candidates [t·E, (t+1)·E), so a scan of per-thread counts
// compacts the selection in candidate (= start) order.
#define TOPK_THREADS 1024
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    hip_topk(const unsigned long long* __restrict__ keys, const int* __restrict__ starts, const HipSeq* __restrict__ seqs,
             int* __restrict__ out, int* __restrict__ counts, int max_cand, int n_keep, int out_stride, int chunk_size) {
    __shared__ unsigned hist[256];
    __shared__ unsigned long long s_prefix;
    __shared__ unsigned s_need;
    __shared__ unsigned warp_tot[32];
    const unsigned long long* k = keys + (size_t)blockIdx.x * max_cand;
    const int per = (max_cand + TOPK_THREADS - 1) / TOPK_THREADS;
    const int lo = min(max_cand, (int)threadIdx.x * per), hi = min(max_cand, lo + per);

    unsigned valid = 0;
    for (int i = lo; i < hi; ++i) valid += k[i] != 0;
    const unsigned n_valid = (unsigned)block_sum((float)valid);  // exact: at most 2^24 candidates
    const unsigned n = min((unsigned)n_keep, n_valid);

    // Radix select, 8 bits at a time from the top: the n-th largest key `thr`.
    unsigned long long prefix = 0, mask = 0;
    unsigned need = n;
    for (int shift = 56; shift >= 0 && need > 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        for (int i = lo; i < hi; ++i)
            if (k[i] != 0 && (k[i] & mask) == prefix) atomicAdd(&hist[(k[i] >> shift) & 0xff], 1u);
        __syncthreads();
        // The digit holding the need-th largest: warp 0, lane l owning bins 8l..8l+8, finds
        // the lane whose bins straddle `need` by a suffix scan (exactly one lane does).
        if (threadIdx.x < 32) {
            const int lane = threadIdx.x;
            unsigned c[8], own = 0;
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                c[t] = hist[8 * lane + t];
                own += c[t];
            }
            unsigned incl = own;  // bins of this lane and every higher one
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned v = __shfl_down_sync(0xffffffffu, incl, o);
                if (lane + o < 32) incl += v;
            }
            unsigned acc = incl - own;
            if (acc < need && need <= incl) {
                int b = 8 * lane;
                for (int t = 7; t >= 0; --t) {
                    if (acc + c[t] >= need) {
                        b = 8 * lane + t;
                        break;
                    }
                    acc += c[t];
                }
                s_prefix = prefix | ((unsigned long long)b << shift);
                s_need = need - acc;
            }
        }
        __syncthreads();
        prefix = s_prefix;
        need = s_need;
        mask |= 0xffull << shift;
        __syncthreads();
    }
    // Keys are unique, so exactly n keys are ≥ thr (thr = the n-th largest); n = 0 keeps none.
    const unsigned long long thr = n == 0 ? ~0ull : prefix;

    unsigned mine = 0;
    for (int i = lo; i < hi; ++i) mine += n > 0 && k[i] != 0 && k[i] >= thr;
    // Exclusive scan of `mine` over the block.
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    unsigned incl = mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    unsigned before = 0;
    for (int w2 = 0; w2 < warp; ++w2) before += warp_tot[w2];
    unsigned at = before + incl - mine;
    const int w = seqs[blockIdx.x].window_end;
    float tokens = 0.f;
    for (int i = lo; i < hi; ++i) {
        if (n > 0 && k[i] != 0 && k[i] >= thr) {
            const int st = starts[(size_t)blockIdx.x * max_cand + i];
            out[(size_t)blockIdx.x * out_stride + at++] = st;
            tokens += (float)min(chunk_size, w - st);
        }
    }
    const float total_tokens = block_sum(tokens);  // exact: integers below 2^24
    if (threadIdx.x == 0) {
        counts[2 * blockIdx.x] = (int)n;
        counts[2 * blockIdx.x + 1] = (int)total_tokens;
    }
}
