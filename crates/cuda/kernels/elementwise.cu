// Row-wise and element-wise ops of the Llama forward pass, on bf16 activations `[rows][cols]`
// (row-major), f32 arithmetic.
//
// Oracle pairs: each kernel mirrors the `CpuBackend` op of the same name in
// crates/engine/src/backend/cpu/mod.rs, and crates/engine/tests/gpu_ops.rs checks it there.
// Indices that come from users (token ids, row lists, pages) are validated on the host before
// launch; the kernels trust them.

// The residual stream is f32 (DESIGN.md §3 allows bf16 storage, but 60 bf16 roundings of the
// running sum drift SmolLM2's logits by ~5e-2 against the CPU's, measured by the gpu_model test); the ops that touch it
// (embed, rms_norm's input, add_assign's target, gather_rows) come in a bf16 and an `_f32`
// instance of one template. `store`/`load` convert to and from the stored type.
__device__ __forceinline__ void store(bf16* p, float v) { *p = to_bf16(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ float load(const bf16* p) { return to_f32(*p); }
__device__ __forceinline__ float load(const float* p) { return *p; }

// embed: out[t] = table[tokens[t]]. Grid: one block per row.
template <class T>
__device__ __forceinline__ void embed_impl(const bf16* __restrict__ table, const unsigned* __restrict__ tokens,
                                           T* __restrict__ out, int cols) {
    const bf16* src = table + (size_t)tokens[blockIdx.x] * cols;
    T* dst = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) store(dst + c, to_f32(src[c]));
}
extern "C" __global__ void embed(const bf16* table, const unsigned* tokens, bf16* out, int cols) {
    embed_impl(table, tokens, out, cols);
}
extern "C" __global__ void embed_f32(const bf16* table, const unsigned* tokens, float* out, int cols) {
    embed_impl(table, tokens, out, cols);
}

// rms_norm: out[t] = x[t] / sqrt(mean(x[t]²) + eps) · weight. Grid: one block per row.
template <class T>
__device__ __forceinline__ void rms_norm_impl(const T* __restrict__ x, const float* __restrict__ weight,
                                              bf16* __restrict__ out, int cols, float eps) {
    const T* xr = x + (size_t)blockIdx.x * cols;
    bf16* dst = out + (size_t)blockIdx.x * cols;
    float ss = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = load(xr + c);
        ss += v * v;
    }
    const float inv = 1.f / sqrtf(block_sum(ss) / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = to_bf16(load(xr + c) * inv * weight[c]);
}
extern "C" __global__ void rms_norm(const bf16* x, const float* weight, bf16* out, int cols, float eps) {
    rms_norm_impl(x, weight, out, cols, eps);
}
extern "C" __global__ void rms_norm_f32(const float* x, const float* weight, bf16* out, int cols, float eps) {
    rms_norm_impl(x, weight, out, cols, eps);
}

// add_assign: x += y over n elements.
template <class T>
__device__ __forceinline__ void add_assign_impl(T* __restrict__ x, const bf16* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        store(x + i, load(x + i) + to_f32(y[i]));
}
extern "C" __global__ void add_assign(bf16* x, const bf16* y, long long n) { add_assign_impl(x, y, n); }
extern "C" __global__ void add_assign_f32(float* x, const bf16* y, long long n) { add_assign_impl(x, y, n); }

// add_bias: x[t][c] += bias[c]. Grid: one block per row.
extern "C" __global__ void add_bias(bf16* __restrict__ x, const float* __restrict__ bias, int cols) {
    bf16* xr = x + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) xr[c] = to_bf16(to_f32(xr[c]) + bias[c]);
}

// swiglu: gate = silu(gate) · up over n elements.
extern "C" __global__ void swiglu(bf16* __restrict__ gate, const bf16* __restrict__ up, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float g = to_f32(gate[i]);
        gate[i] = to_bf16(g / (1.f + expf(-g)) * to_f32(up[i]));
    }
}

// gather_rows: out[i] = x[rows[i]]. Grid: one block per output row.
template <class T>
__device__ __forceinline__ void gather_rows_impl(const T* __restrict__ x, const unsigned* __restrict__ rows,
                                                 T* __restrict__ out, int cols) {
    const T* src = x + (size_t)rows[blockIdx.x] * cols;
    T* dst = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}
extern "C" __global__ void gather_rows(const bf16* x, const unsigned* rows, bf16* out, int cols) {
    gather_rows_impl(x, rows, out, cols);
}
extern "C" __global__ void gather_rows_f32(const float* x, const unsigned* rows, float* out, int cols) {
    gather_rows_impl(x, rows, out, cols);
}

// kv_write (CpuBackend::kv_write): stores row t of K and V (`width` = Hkv·d values each,
// un-rotated) into slot `row_slot[t]` of page `row_page[t]`. Page layout, in elements:
// [layer][K|V][slot][Hkv][d], `page_size` slots, `n_layers` layers. Grid: one block per row.
extern "C" __global__ void kv_write(bf16* __restrict__ store, const bf16* __restrict__ k, const bf16* __restrict__ v,
                                    const unsigned* __restrict__ row_page, const unsigned* __restrict__ row_slot,
                                    int width, int page_size, int n_layers, int layer) {
    const size_t layer_page = (size_t)page_size * width;
    const size_t page = (size_t)row_page[blockIdx.x] * (2 * (size_t)n_layers) * layer_page;
    bf16* k_dst = store + page + (2 * (size_t)layer) * layer_page + (size_t)row_slot[blockIdx.x] * width;
    bf16* v_dst = k_dst + layer_page;
    const bf16* k_src = k + (size_t)blockIdx.x * width;
    const bf16* v_src = v + (size_t)blockIdx.x * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        k_dst[c] = k_src[c];
        v_dst[c] = v_src[c];
    }
}

// fill_uniform: x[i] = lo + (hi − lo)·u, with u in [0, 1) a counter-based hash of (seed, i)
// (splitmix64). Fills benchmark-sized tensors (gigabytes of KV) on the device, where a host
// generator and upload would take longer than the benchmark itself; tests use host data.
extern "C" __global__ void fill_uniform(bf16* __restrict__ x, long long n, unsigned long long seed, float lo,
                                        float hi) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        unsigned long long z = seed + (unsigned long long)i * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        x[i] = to_bf16(lo + (hi - lo) * u);
    }
}
