// The thread layout of the per-channel kernels over channels-last x[rows, C] (batch norm's statistics, fused
// passes and backward): each thread owns V consecutive channels of a row, moved by one aligned access.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/common.cuh"
#include "kernels/vector_access.cuh"

namespace dsmil::kernels {

// Blocks of a per-channel reduction, whatever the device, so that the summation order is fixed by the shape
// (and the channel width, which is the widest for the pool's aligned buffers).
constexpr int64_t kReductionBlocks = 512;

// Rows each thread loads before it uses any: one 16-byte access per row and operand in flight is too few to
// keep the memory busy with the few blocks a reduction has (kReductionBlocks over ~130 SMs).
constexpr int kRowsInFlight = 2;

// out[0, V) = p[0, V) as floats, one aligned access of sizeof(T) * V bytes.
template <typename T, int V>
__device__ __forceinline__ void load_channels(const T* p, float (&out)[V]) {
  const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = to_float(pack.v[k]);
}

template <typename T, int V>
__device__ __forceinline__ void store_channels(T* p, const float (&in)[V]) {
  Pack<T, V> pack;
#pragma unroll
  for (int k = 0; k < V; ++k) pack.v[k] = from_float<T>(in[k]);
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

// Block (tx, ty) puts tx channel groups of one row side by side, so that a warp reads contiguous memory, and
// ty rows above each other; grid.x tiles the groups (group_tiles), grid.y the rows.
struct ChannelLayout {
  dim3 block;
  unsigned group_tiles;
};

inline ChannelLayout channel_layout(int64_t channels, int width) {
  const int64_t groups = channels / width;
  const unsigned tx = static_cast<unsigned>(groups < 32 ? groups : 32);
  return {dim3(tx, kThreads / tx), static_cast<unsigned>((groups + tx - 1) / tx)};
}

// Row blocks of the grid-stride passes: enough to cover the rows, at most a few waves.
inline unsigned row_blocks(int64_t rows, const ChannelLayout& layout) {
  const int64_t needed = (rows + layout.block.y - 1) / layout.block.y;
  const int64_t cap = kMaxBlocks / layout.group_tiles;
  const int64_t blocks = needed < cap ? needed : cap;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

// Row chunks of a per-channel reduction (one block row each, kReductionBlocks blocks in all at most).
inline int64_t row_chunks(int64_t rows, const ChannelLayout& layout) {
  const int64_t by_blocks = kReductionBlocks / layout.group_tiles;
  const int64_t by_rows = (rows + layout.block.y - 1) / layout.block.y;
  const int64_t chunks = by_blocks < by_rows ? by_blocks : by_rows;
  return chunks < 1 ? 1 : chunks;
}

// The most chunks any channel width gives (1, 2, 4 or 8 channels a thread: f32 and bf16 in 4-, 8- and 16-byte
// accesses): the partial sums' share of a reduction's scratch, before the width is known.
inline int64_t row_chunk_capacity(int64_t rows, int64_t channels) {
  int64_t most = 1;
  for (const int width : {1, 2, 4, 8}) {
    if (channels % width != 0) continue;
    const int64_t chunks = row_chunks(rows, channel_layout(channels, width));
    most = chunks > most ? chunks : most;
  }
  return most;
}

// Widest V (16 bytes, else 8, else one element) that divides C with every pointer aligned to V elements.
template <typename T>
int channel_width(int64_t channels, std::initializer_list<const void*> pointers) {
  for (const int width : {static_cast<int>(16 / sizeof(T)), static_cast<int>(8 / sizeof(T))}) {
    bool fits = channels % width == 0;
    for (const void* p : pointers) fits = fits && reinterpret_cast<uintptr_t>(p) % (width * sizeof(T)) == 0;
    if (fits) return width;
  }
  return 1;
}

// Calls launch(std::integral_constant<int, V>) for the width chosen by channel_width.
template <typename T, typename F>
cudaError_t with_channel_width(int width, F&& launch) {
  constexpr int kWide = 16 / sizeof(T), kNarrow = 8 / sizeof(T);
  if (width == kWide) return launch(std::integral_constant<int, kWide>{});
  if (width == kNarrow) return launch(std::integral_constant<int, kNarrow>{});
  return launch(std::integral_constant<int, 1>{});
}

// out[c0 + k] = the sum of sums[k] over the block's ty rows, added in row order (fixed by the block's shape),
// for each of a thread's V channels; lane_sums holds one double per thread of the block. Every thread of the
// block must call it (it synchronises the block); owns_channels: c0 < C.
template <int V>
__device__ void block_column_totals(const double (&sums)[V], bool owns_channels, int64_t c0, double* lane_sums,
                                    double* out) {
  const unsigned lane = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    lane_sums[lane] = sums[k];
    __syncthreads();
    if (threadIdx.y == 0 && owns_channels) {
      double total = 0.0;
      for (unsigned r = 0; r < blockDim.y; ++r) total += lane_sums[r * blockDim.x + threadIdx.x];
      out[c0 + k] = total;
    }
    __syncthreads();
  }
}

}  // namespace dsmil::kernels
