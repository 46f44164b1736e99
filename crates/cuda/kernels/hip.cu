// HiP mask estimation for decode (DESIGN.md §4.2): one pruning stage = `hip_stage_scores`
// (every candidate chunk scored by the descent) then `hip_topk` (the best chunks kept, on the
// device, sorted by start for the next stage). One query row per sequence and layer.
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
    int row;         // activation row of the query
    int pos;         // query position p
    int page_start;  // the sequence's pages are page_ids[page_start..]
    int window_end;  // w: candidates lie in [n_sink, w)
};
static_assert(sizeof(HipSeq) == 16, "HipSeq mirrors infinihip_cuda::hip::HipSeq");

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
    int strategy;              // 0 relative, 1 chunk-indexed, 2 plain (PruningRope)
    int head_dim;
    int pad;
};
static_assert(sizeof(HipStageParams) == 144, "HipStageParams mirrors infinihip_cuda::hip::HipStageParams");

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

// The CPU's `dot`: 8 lanes over i ≡ j (mod 8) in index order, the lanes summed 0..8, then the
// tail of d % 8 terms.
__device__ __forceinline__ float dot_exact(const float* a, const float* b, int d) {
    float lanes[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) lanes[j] = 0.f;
    const int n8 = d / 8 * 8;
    for (int m = 0; m < n8; m += 8) {
#pragma unroll
        for (int j = 0; j < 8; ++j) lanes[j] = __fadd_rn(lanes[j], __fmul_rn(a[m + j], b[m + j]));
    }
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) sum = __fadd_rn(sum, lanes[j]);
    for (int i = n8; i < d; ++i) sum = __fadd_rn(sum, __fmul_rn(a[i], b[i]));
    return sum;
}

// One probe: max over heads of row_h · RoPE(key at `key_pos`, rotated at `rope_pos`). The warp
// stages the rotated key of every KV head in `sk` ([Hkv][d + 1]), then lane h scores head h.
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
    float best = NEG_INF;
    for (int h = lane; h < p.n_heads; h += 32) best = fmaxf(best, dot_exact(sq + h * ds, sk + (h / g) * ds, d));
    return group_max<32>(best);
}

__device__ __forceinline__ unsigned orderable(float f) {
    const unsigned bits = __float_as_uint(f + 0.0f);  // −0 → +0: equal scores rank by start
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Grid: (ceil(max_cand / HIP_WARPS), sequences); block: 32·HIP_WARPS threads; dynamic shared
// memory: H·(d+1) + HIP_WARPS·Hkv·(d+1) floats.
extern "C" __global__ void hip_stage_scores(const HipStageParams p) {
    extern __shared__ float smem[];
    const HipSeq s = p.seqs[blockIdx.y];
    const int d = p.head_dim, ds = d + 1;
    float* sq = smem;
    float* sk = smem + p.n_heads * ds + (threadIdx.x / 32) * p.n_kv_heads * ds;
    const int l_c = p.chunk_size, w = s.window_end;
    const int n_grid = w > p.n_sink ? (w - p.n_sink + l_c - 1) / l_c : 0;  // chunks of the stage's whole grid

    // The query row, rotated at its pruning position and scaled by 1 / (1 · √d) as QueryRows.
    int q_pos = s.pos;
    if (p.strategy == 0) q_pos = p.n_window + 1;
    if (p.strategy == 1) q_pos = min(s.pos, n_grid + p.n_window);
    for (int e = threadIdx.x; e < p.n_heads * d; e += blockDim.x) sq[(e / d) * ds + e % d] = to_f32(p.q[(size_t)s.row * p.n_heads * d + e]);
    __syncthreads();
    for (int h = threadIdx.x / 32; h < p.n_heads; h += blockDim.x / 32) rotate_exact(sq + h * ds, d, q_pos, p, threadIdx.x % 32, 32);
    __syncthreads();
    const float weight = __fdiv_rn(1.0f, __fmul_rn(1.0f, __fsqrt_rn((float)d)));
    for (int e = threadIdx.x; e < p.n_heads * d; e += blockDim.x) {
        float* x = sq + (e / d) * ds + e % d;
        *x = __fmul_rn(__fadd_rn(0.0f, *x), weight);
    }
    __syncthreads();

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
            best = probe(p, s, sq, sk, l, p.strategy == 0 ? 0 : (p.strategy == 1 ? chunk_rope : l));
        } else {
            best = NEG_INF;
            while (r - l > 1) {
                const int c = l + (r - l) / 2;
                const int kl = l + (c - l) / 2, kr = c + (r - c) / 2;
                const float left = probe(p, s, sq, sk, kl, p.strategy == 0 ? 0 : (p.strategy == 1 ? chunk_rope : kl));
                const float right = probe(p, s, sq, sk, kr, p.strategy == 0 ? 1 : (p.strategy == 1 ? chunk_rope : kr));
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
