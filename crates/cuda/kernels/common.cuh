// Prelude of every infinihip kernel module (prepended to each .cu file before NVRTC compiles
// it): the bf16 type, conversions and warp/block reductions.
//
// Numerics (DESIGN.md §3): tensors are stored as bf16, every sum and product is done in f32,
// and results are rounded to nearest-even once when stored.

#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

// NVRTC has no <cmath>: the softmax's "no key seen yet" maximum.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 to_bf16(float v) { return __float2bfloat16_rn(v); }

// Sum over the `WIDTH` consecutive lanes of a group (WIDTH a power of two, at most 32).
template <int WIDTH>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = WIDTH / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <int WIDTH>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
    for (int o = WIDTH / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = group_sum<32>(v);
    __syncthreads();  // `partial` may still be read by an earlier call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < n_warps; ++w) total += partial[w];
    return total;
}

// The virtual key list of block-sparse attention (DESIGN.md §4.3), shared by the attention
// kernels: index v of a query's keys is the sink for v < n_s (position v), then the `n_sel`
// selected tokens of the mask's blocks (starts `blocks`, ascending, `block_k` tokens each;
// only the last can be clipped at w, so the selected tokens are the first n_sel of that
// block-major enumeration), then the window from w. Dense attention is n_s ≥ p + 1, no mask.
// RoPE positions: the key's own under plain RoPE; under streaming RoPE v + (w − n_sel − n_s),
// which renumbers sink and selection to end just before w and keeps the window's.
__device__ __forceinline__ int key_position(int v, int n_s, int n_sel, const int* blocks, int block_k, int w) {
    if (v < n_s) return v;
    if (v < n_s + n_sel) {
        const int i = v - n_s;
        return blocks[i / block_k] + i % block_k;
    }
    return w + (v - n_s - n_sel);
}
