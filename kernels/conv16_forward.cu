// y[n, d, h, w, k] = sum over taps (t, r, s) and 16 channels c of x[n, d+t-pd, h+r-ph, w+s-pw, c] w[k, t, r, s, c]:
// bf16 implicit GEMM with WMMA 16x16x16 fragments (fp32 accumulation); x[N,D,H,W,16], w[K,T,R,S,16], y[N,Do,Ho,Wo,K].
#include <cuda_bf16.h>
#include <mma.h>

#include <cstdint>

#include "kernels/conv16_forward.h"

namespace dsmil::kernels {

namespace {

using bf16 = __nv_bfloat16;
namespace wmma = nvcuda::wmma;

// One block computes a tile of kTileH x kTileW output positions of one (n, d) plane for kTileK output
// channels; each warp a row segment of kWarpPositions positions (kFragmentsM fragment rows) for all kTileK
// channels: per filter tap it loads kFragmentsM A and kFragmentsK B fragments for kFragmentsM x kFragmentsK
// products. On the H200 at the stem's fold (103 GFLOP): one A fragment per warp (5 loads for 4 products, 4-row
// tiles) 0.90 ms, two 0.62 ms (Nsight Compute: L1 / shared memory 67% busy, tensor pipe 25%), four 0.57 ms.
constexpr int kTileK = 64;
constexpr int kTileH = 8;
constexpr int kTileW = 64;
constexpr int kFragment = 16;
constexpr int kFragmentsK = kTileK / kFragment;
constexpr int kFragmentsM = 4;
constexpr int kWarpPositions = kFragmentsM * kFragment;
constexpr int kWarpsPerRow = kTileW / kWarpPositions;
constexpr int kWarps = kTileH * kWarpsPerRow;
constexpr int kBlockThreads = kWarps * 32;
// 16-byte loads of the filter or the input window each thread holds in registers before storing them to shared
// memory.
constexpr int kLoadsInFlight = 8;
// Row pitches in shared memory, padded so that the 16 rows a fragment load or store touches fall in
// different banks (64 bf16 or 64 floats per row would put every row in the same 8 banks).
constexpr int kFilterPitch = kTileK + 8;  // bf16
constexpr int kStagePitch = kTileK + 4;   // float
constexpr int kChannels = static_cast<int>(kConv16Channels);

struct Tiling {
  int64_t h_tiles, w_tiles, tiles;
  int in_h, in_w;  // the input window of one tile
  size_t filter_bytes, work_bytes;
};

Tiling tiling_for(const Conv16Forward& p) {
  Tiling t{};
  t.h_tiles = (p.out[1] + kTileH - 1) / kTileH;
  t.w_tiles = (p.out[2] + kTileW - 1) / kTileW;
  t.tiles = p.x.n * p.out[0] * t.h_tiles * t.w_tiles;
  t.in_h = kTileH + p.taps[1] - 1;
  t.in_w = kTileW + p.taps[2] - 1;
  const size_t taps = static_cast<size_t>(p.taps[0]) * p.taps[1] * p.taps[2];
  t.filter_bytes = taps * kChannels * kFilterPitch * sizeof(bf16);
  const size_t input_bytes = static_cast<size_t>(p.taps[0]) * t.in_h * t.in_w * kChannels * sizeof(bf16);
  // The results go out one fragment row (16 positions) at a time.
  const size_t stage_bytes = static_cast<size_t>(kWarps) * kFragment * kStagePitch * sizeof(float);
  t.work_bytes = input_bytes > stage_bytes ? input_bytes : stage_bytes;
  return t;
}

// Shared memory: the block's filter slice [tap][c][k] (pitch kFilterPitch), then a work area that holds the
// tile's input window [t][i][j][c] during the products and each warp's fp32 results [16][kStagePitch] after.
// Blocks loop over tiles (grid = one block per SM), so the filter slice is loaded once per block.
__global__ void __launch_bounds__(kBlockThreads, 1)
    conv16_forward_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ y, Conv16Forward p,
                          Tiling tiling) {
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* filter = reinterpret_cast<bf16*>(shared);
  bf16* window = reinterpret_cast<bf16*>(shared + tiling.filter_bytes);
  float* stage = reinterpret_cast<float*>(shared + tiling.filter_bytes);

  const int taps_t = p.taps[0], taps_r = p.taps[1], taps_s = p.taps[2];
  const int taps = taps_t * taps_r * taps_s;
  const int64_t k0 = int64_t(blockIdx.y) * kTileK;
  // Read in w's order, 16 bytes (8 channels of one filter's tap) per load with kLoadsInFlight loads per thread
  // issued before any is stored, written transposed. One element per load, each stored before the next, took
  // ~90 us a block on the H200 (notes/PERF.md): the whole kernel at the tiny shape.
  const int filter_packs = taps * kChannels * kTileK / 8;
  const uint4* w_packs = reinterpret_cast<const uint4*>(w + k0 * taps * kChannels);
  for (int first = threadIdx.x; first < filter_packs; first += kLoadsInFlight * kBlockThreads) {
    uint4 values[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u)
      if (first + u * kBlockThreads < filter_packs) values[u] = w_packs[first + u * kBlockThreads];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int q = first + u * kBlockThreads;
      if (q >= filter_packs) continue;
      const int tap_channel = (q * 8) % (taps * kChannels), k = (q * 8) / (taps * kChannels);
      const bf16* eight = reinterpret_cast<const bf16*>(&values[u]);
#pragma unroll
      for (int c = 0; c < 8; ++c) filter[(tap_channel + c) * kFilterPitch + k] = eight[c];
    }
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_row = warp / kWarpsPerRow, warp_col = (warp % kWarpsPerRow) * kWarpPositions;
  const int in_h = tiling.in_h, in_w = tiling.in_w;
  for (int64_t tile = blockIdx.x; tile < tiling.tiles; tile += gridDim.x) {
    int64_t rest = tile;
    const int64_t w0 = (rest % tiling.w_tiles) * kTileW;
    rest /= tiling.w_tiles;
    const int64_t h0 = (rest % tiling.h_tiles) * kTileH;
    rest /= tiling.h_tiles;
    const int64_t od = rest % p.out[0], n = rest / p.out[0];

    __syncthreads();  // the filter is in place; the previous tile's results have been read
    // The input window, two 16-byte halves per pixel (8 channels each), zero outside x; kLoadsInFlight
    // loads per thread are issued before any is stored.
    const int halves = taps_t * in_h * in_w * 2;
    for (int first = threadIdx.x; first < halves; first += kLoadsInFlight * kBlockThreads) {
      uint4 values[kLoadsInFlight];
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u) {
        const int q = first + u * kBlockThreads, half = q & 1, pixel = q >> 1;
        const int j = pixel % in_w, i = (pixel / in_w) % in_h, t = pixel / (in_w * in_h);
        const int64_t d = od + t - p.pad[0], h = h0 + i - p.pad[1], wi = w0 + j - p.pad[2];
        values[u] = make_uint4(0, 0, 0, 0);
        if (q < halves && d >= 0 && d < p.x.d && h >= 0 && h < p.x.h && wi >= 0 && wi < p.x.w)
          values[u] =
              reinterpret_cast<const uint4*>(x + (((n * p.x.d + d) * p.x.h + h) * p.x.w + wi) * kChannels)[half];
      }
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u)
        if (first + u * kBlockThreads < halves) reinterpret_cast<uint4*>(window)[first + u * kBlockThreads] = values[u];
    }
    __syncthreads();

    wmma::fragment<wmma::accumulator, kFragment, kFragment, kFragment, float> acc[kFragmentsM][kFragmentsK];
#pragma unroll
    for (int m = 0; m < kFragmentsM; ++m)
#pragma unroll
      for (int f = 0; f < kFragmentsK; ++f) wmma::fill_fragment(acc[m][f], 0.0f);
    for (int t = 0; t < taps_t; ++t)
      for (int r = 0; r < taps_r; ++r)
        for (int s = 0; s < taps_s; ++s) {
          // Rows of A: 16 of the warp's positions shifted by the tap; columns: the 16 channels.
          wmma::fragment<wmma::matrix_a, kFragment, kFragment, kFragment, bf16, wmma::row_major> a[kFragmentsM];
          const bf16* tap_window = window + ((t * in_h + warp_row + r) * in_w + warp_col + s) * kChannels;
#pragma unroll
          for (int m = 0; m < kFragmentsM; ++m)
            wmma::load_matrix_sync(a[m], tap_window + m * kFragment * kChannels, kChannels);
          const bf16* tap_filter = filter + ((t * taps_r + r) * taps_s + s) * kChannels * kFilterPitch;
#pragma unroll
          for (int f = 0; f < kFragmentsK; ++f) {
            wmma::fragment<wmma::matrix_b, kFragment, kFragment, kFragment, bf16, wmma::row_major> b;
            wmma::load_matrix_sync(b, tap_filter + f * kFragment, kFilterPitch);
#pragma unroll
            for (int m = 0; m < kFragmentsM; ++m) wmma::mma_sync(acc[m][f], a[m], b, acc[m][f]);
          }
        }
    __syncthreads();  // every warp is done with the window before the results overwrite it

    // Each fragment row's 16 positions x 64 channels through the warp's staging area, written 8 channels
    // (16 bytes) per store.
    float* results = stage + warp * kFragment * kStagePitch;
    const int64_t oh = h0 + warp_row;
    constexpr int kGroups = kTileK / 8;
#pragma unroll
    for (int m = 0; m < kFragmentsM; ++m) {
#pragma unroll
      for (int f = 0; f < kFragmentsK; ++f)
        wmma::store_matrix_sync(results + f * kFragment, acc[m][f], kStagePitch, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < kFragment * kGroups; e += 32) {
        const int position = e / kGroups, group = e % kGroups;
        const int64_t ow = w0 + warp_col + m * kFragment + position;
        if (oh >= p.out[1] || ow >= p.out[2]) continue;
        const float* from = results + position * kStagePitch + group * 8;
        alignas(16) bf16 packed[8];
#pragma unroll
        for (int c = 0; c < 8; ++c) packed[c] = __float2bfloat16_rn(from[c]);
        *reinterpret_cast<uint4*>(y + (((n * p.out[0] + od) * p.out[1] + oh) * p.out[2] + ow) * p.k + k0 + group * 8) =
            *reinterpret_cast<const uint4*>(packed);
      }
      __syncwarp();  // the staging area is read before the next fragment row overwrites it
    }
  }
}

int max_shared_bytes() {
  int device = 0, bytes = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return 0;
  return bytes;
}

}  // namespace

bool conv16_forward_supported(const Conv16Forward& p) {
  if (p.x.c != kConv16Channels || p.k <= 0 || p.k % kTileK != 0) return false;
  for (int axis = 0; axis < 3; ++axis)
    if (p.taps[axis] < 1 || p.out[axis] < 1) return false;
  const Tiling t = tiling_for(p);
  return t.filter_bytes + t.work_bytes <= static_cast<size_t>(max_shared_bytes());
}

cudaError_t conv16_forward(const bf16* x, const bf16* w, bf16* y, const Conv16Forward& p, cudaStream_t stream) {
  if (!conv16_forward_supported(p)) return cudaErrorInvalidValue;
  if (p.x.n == 0) return cudaSuccess;
  const Tiling t = tiling_for(p);
  const size_t shared_bytes = t.filter_bytes + t.work_bytes;
  if (const cudaError_t e = cudaFuncSetAttribute(conv16_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(shared_bytes));
      e != cudaSuccess)
    return e;
  int device = 0, processors = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (const cudaError_t e = cudaDeviceGetAttribute(&processors, cudaDevAttrMultiProcessorCount, device);
      e != cudaSuccess)
    return e;
  const int64_t blocks = t.tiles < processors ? t.tiles : processors;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(p.k / kTileK));
  conv16_forward_kernel<<<grid, kBlockThreads, shared_bytes, stream>>>(x, w, y, p, t);
  return cudaGetLastError();
}

}  // namespace dsmil::kernels
