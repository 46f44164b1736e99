// Row-wise and element-wise ops of the Llama forward pass, on bf16 activations `[rows][cols]`
// (row-major), f32 arithmetic.
//
// Oracle pairs: each kernel mirrors the `CpuBackend` op of the same name in
// crates/engine/src/backend/cpu/mod.rs, and crates/engine/tests/gpu_ops.rs checks it there.
// Indices that come from users (token ids, row lists, pages) are validated on the host before
// launch; the kernels trust them.

// embed: out[t] = table[tokens[t]]. Grid: one block per row.
extern "C" __global__ void embed(const bf16* __restrict__ table, const unsigned* __restrict__ tokens,
                                 bf16* __restrict__ out, int cols) {
    const bf16* src = table + (size_t)tokens[blockIdx.x] * cols;
    bf16* dst = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}

// rms_norm: out[t] = x[t] / sqrt(mean(x[t]²) + eps) · weight. Grid: one block per row.
extern "C" __global__ void rms_norm(const bf16* __restrict__ x, const float* __restrict__ weight,
                                    bf16* __restrict__ out, int cols, float eps) {
    const bf16* xr = x + (size_t)blockIdx.x * cols;
    bf16* dst = out + (size_t)blockIdx.x * cols;
    float ss = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = to_f32(xr[c]);
        ss += v * v;
    }
    const float inv = 1.f / sqrtf(block_sum(ss) / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = to_bf16(to_f32(xr[c]) * inv * weight[c]);
}

// add_assign: x += y over n elements.
extern "C" __global__ void add_assign(bf16* __restrict__ x, const bf16* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] = to_bf16(to_f32(x[i]) + to_f32(y[i]));
}

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
extern "C" __global__ void gather_rows(const bf16* __restrict__ x, const unsigned* __restrict__ rows,
                                       bf16* __restrict__ out, int cols) {
    const bf16* src = x + (size_t)rows[blockIdx.x] * cols;
    bf16* dst = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
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
