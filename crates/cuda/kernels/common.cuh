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
