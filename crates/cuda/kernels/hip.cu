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

// Loads the key at `key_pos` (every KV head) into `dst` ([Hkv][d + 1] f32) and rotates it at
// table row `rope_pos`; the whole warp takes part.
__device__ void load_probe_key(const HipStageParams& p, const HipSeq& s, float* dst, int key_pos, int rope_pos) {
    const int lane = threadIdx.x % 32;
    const int d = p.head_dim, ds = d + 1;
    const size_t width = (size_t)p.n_kv_heads * d;
    const size_t layer_page = (size_t)p.page_size * width;
    const size_t page = p.page_ids[s.page_start + key_pos / p.page_size];
    const bf16* k_row = p.kv + page * 2 * (size_t)p.n_layers * layer_page + 2 * (size_t)p.layer * layer_page +
                        (size_t)(key_pos % p.page_size) * width;
    // 16-byte loads: 8 components of one head per lane (d is a multiple of 8).
    for (int e = lane * 8; e < (int)width; e += 256) {
        const uint4 raw = *reinterpret_cast<const uint4*>(k_row + e);
        const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
        float* out = dst + (e / d) * ds + e % d;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const float2 f = __bfloat1622float2(h2[t]);
            out[2 * t] = f.x;
            out[2 * t + 1] = f.y;
        }
    }
    __syncwarp();
    for (int kvh = 0; kvh < p.n_kv_heads; ++kvh) rotate_exact(dst + kvh * ds, d, rope_pos, p, lane, 32);
}

__device__ __forceinline__ unsigned orderable(float f) {
    const unsigned bits = __float_as_uint(f + 0.0f);  // −0 → +0: equal scores rank by start
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// hip_stage_scores: every candidate chunk's descent score (DESIGN.md §4.2 step 2). A warp
// descends CANDS candidates in lockstep: at each level it stages their 2·CANDS probe keys
// (rotated) in shared memory, and each lane scores its (row, head) pairs against all of them,
// so that every scoring-row value it loads serves 2·CANDS dot products (one probe at a time
// re-read the rows from L2 for every probe, which bounded the stage). Each dot product keeps
// the CPU's order, so the scores are the CPU's bit for bit.
// A warp's levels are sequential chains of key loads, so few candidates (a decode step's one
// query) want one candidate per warp and many warps (`hip_stage_scores_c1`), and many
// (a prefill step's blocks) want the shared row loads (`hip_stage_scores_c4`).
// Grid: (ceil(max_cand / (CANDS·warps)), sequences); block: 32·warps threads; dynamic shared
// memory: warps·2·CANDS·Hkv·(d+1) floats. The scoring rows come from `hip_pool_queries`.
template <int CANDS>
__device__ __forceinline__ void stage_scores(const HipStageParams& p) {
    constexpr int NK = 2 * CANDS;  // probe keys per warp and level
    extern __shared__ float smem[];
    const HipSeq s = p.seqs[blockIdx.y];
    const int d = p.head_dim, ds = d + 1;
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int key_floats = p.n_kv_heads * ds;
    const float* sq = p.rows + (size_t)blockIdx.y * d * p.max_rows * p.n_heads;
    float* sk = smem + (size_t)warp * NK * key_floats;
    const int l_c = p.chunk_size, w = s.window_end;
    const int n_grid = w > p.n_sink ? (w - p.n_sink + l_c - 1) / l_c : 0;  // chunks of the stage's whole grid
    const int i0 = (blockIdx.x * warps + warp) * CANDS;
    if (i0 >= p.max_cand) return;

    // Candidates i0 .. i0 + CANDS: start (−1: none), the descent's [l, r) and running best.
    int start[CANDS], l[CANDS], r[CANDS];
    float best[CANDS];
#pragma unroll
    for (int c = 0; c < CANDS; ++c) {
        const int i = i0 + c;
        int st = -1;
        if (i < p.max_cand) {
            if (p.ratio == 0) {
                if (i < n_grid) st = p.n_sink + i * l_c;
            } else {
                const int parent = i / p.ratio;
                if (parent < p.prev_counts[2 * blockIdx.y]) {
                    const int x = p.prev_starts[(size_t)blockIdx.y * p.prev_stride + parent] + (i % p.ratio) * l_c;
                    if (x < w) st = x;
                }
            }
        }
        start[c] = st;
        l[c] = st;
        r[c] = st >= 0 ? min(st + l_c, w) : st;
        best[c] = NEG_INF;
    }
    const int g = p.n_heads / p.n_kv_heads;
    const int n_pairs = (s.n_q + p.query_group - 1) / p.query_group * p.n_heads;
    const int rh = p.max_rows * p.n_heads;
    for (bool first = true;; first = false) {
        // This level's probes: key 2c scores the left half of candidate c, 2c + 1 the right; a
        // one-token chunk is a single left probe at its first level.
        int kpos[NK], mid[CANDS];
        bool any = false;
#pragma unroll
        for (int c = 0; c < CANDS; ++c) {
            kpos[2 * c] = kpos[2 * c + 1] = -1;
            mid[c] = 0;
            if (start[c] < 0) continue;
            if (r[c] - l[c] > 1) {
                mid[c] = l[c] + (r[c] - l[c]) / 2;
                kpos[2 * c] = l[c] + (mid[c] - l[c]) / 2;
                kpos[2 * c + 1] = mid[c] + (r[c] - mid[c]) / 2;
                any = true;
            } else if (first && r[c] - l[c] == 1) {
                kpos[2 * c] = l[c];
                any = true;
            }
        }
        if (!any) break;
        __syncwarp();  // the previous level's readers are done with sk
#pragma unroll
        for (int k = 0; k < NK; ++k) {
            if (kpos[k] < 0) continue;
            const int chunk_rope = (start[k / 2] - p.n_sink) / l_c;
            const int rope_pos = s.strategy == 0 ? (k & 1) : (s.strategy == 1 ? chunk_rope : kpos[k]);
            load_probe_key(p, s, sk + k * key_floats, kpos[k], rope_pos);
        }
        __syncwarp();
        // max over the (row, head) pairs of row · key, for every probe key at once.
        float res[NK];
#pragma unroll
        for (int k = 0; k < NK; ++k) res[k] = NEG_INF;
        for (int x = lane; x < n_pairs; x += 32) {
            const float* row = sq + x;
            const float* key = sk + (x % p.n_heads / g) * ds;
            float acc[NK][8];
#pragma unroll
            for (int k = 0; k < NK; ++k) {
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[k][j] = 0.f;
            }
            const int n8 = d / 8 * 8;
            for (int m = 0; m < n8; m += 8) {
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float a = row[(size_t)(m + j) * rh];
#pragma unroll
                    for (int k = 0; k < NK; ++k) acc[k][j] = __fadd_rn(acc[k][j], __fmul_rn(a, key[k * key_floats + m + j]));
                }
            }
#pragma unroll
            for (int k = 0; k < NK; ++k) {
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < 8; ++j) sum = __fadd_rn(sum, acc[k][j]);
                for (int e = n8; e < d; ++e) sum = __fadd_rn(sum, __fmul_rn(row[(size_t)e * rh], key[k * key_floats + e]));
                res[k] = fmaxf(res[k], sum);
            }
        }
#pragma unroll
        for (int k = 0; k < NK; ++k) res[k] = group_max<32>(res[k]);
#pragma unroll
        for (int c = 0; c < CANDS; ++c) {
            if (kpos[2 * c] < 0) continue;
            if (kpos[2 * c + 1] < 0) {  // a one-token chunk: its single probe is its score
                best[c] = res[2 * c];
                r[c] = l[c];
                continue;
            }
            const float left = res[2 * c], right = res[2 * c + 1];
            best[c] = fmaxf(fmaxf(best[c], left), right);
            if (right > left) {
                l[c] = mid[c];
            } else {
                r[c] = mid[c];
            }
        }
    }
    if (lane < CANDS) {
        // Lane c writes candidate c (registers indexed by a constant only, so no local memory).
#pragma unroll
        for (int c = 0; c < CANDS; ++c) {
            const int i = i0 + c;
            if (lane != c || i >= p.max_cand) continue;
            const unsigned long long key =
                start[c] < 0 ? 0ull
                             : ((unsigned long long)orderable(best[c]) << 32) | (unsigned long long)(0xffffffffu - (unsigned)i);
            p.keys[(size_t)blockIdx.y * p.max_cand + i] = key;
            p.starts[(size_t)blockIdx.y * p.max_cand + i] = start[c];
        }
    }
}

extern "C" __global__ void hip_stage_scores_c1(const HipStageParams p) { stage_scores<1>(p); }
extern "C" __global__ void hip_stage_scores_c4(const HipStageParams p) { stage_scores<4>(p); }

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
