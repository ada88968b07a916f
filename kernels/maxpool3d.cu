// 3-D max pooling over channels-last x[N, D, H, W, C] -> y[N, D', H', W', C] with a u8 argmax (the first maximum's
// place in its window, (d, h, w) order); backward gathers dy[N, D', H', W', C] into dx[N, D, H, W, C], one write each.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/common.cuh"
#include "kernels/maxpool3d.h"

namespace dsmil::kernels {

namespace {

// G consecutive channels of one position, moved with a single access of sizeof(E) * G bytes.
template <typename E, int G>
struct alignas(sizeof(E) * G) Pack {
  E v[G];
};

template <typename E, int G>
__device__ __forceinline__ Pack<E, G> load_pack(const E* p) {
  return *reinterpret_cast<const Pack<E, G>*>(p);
}

template <typename E, int G>
__device__ __forceinline__ void store_pack(E* p, const Pack<E, G>& pack) {
  *reinterpret_cast<Pack<E, G>*>(p) = pack;
}

// A thread's item: position (n, d, h, w) of a volume and its channel group, from the flat item index
// ((((n * D + d) * H + h) * W + w) * groups + group). Consecutive threads take consecutive channel groups,
// so a warp's accesses to one position are contiguous.
template <typename Index>
struct Item {
  Index n, d, h, w, group;
};

template <typename Index>
__device__ __forceinline__ Item<Index> item_of(Index i, Volume v, Index groups) {
  Item<Index> it;
  it.group = i % groups;
  i /= groups;
  it.w = i % Index(v.w);
  i /= Index(v.w);
  it.h = i % Index(v.h);
  i /= Index(v.h);
  it.d = i % Index(v.d);
  it.n = i / Index(v.d);
  return it;
}

template <typename T, int G, typename Index>
__global__ void maxpool3d_forward_kernel(const T* __restrict__ x, Volume in, Volume out, Window3 win, T* __restrict__ y,
                                         uint8_t* __restrict__ argmax) {
  const Index groups = Index(out.c / G), c = Index(in.c);
  const Index in_d = Index(in.d), in_h = Index(in.h), in_w = Index(in.w);
  const Index total = Index(out.n * out.d * out.h * out.w) * groups;
  const Index step = Index(gridDim.x) * Index(blockDim.x);
  for (Index i = Index(blockIdx.x) * Index(blockDim.x) + Index(threadIdx.x); i < total; i += step) {
    const Item<Index> o = item_of(i, out, groups);
    const T* volume = x + o.n * (in_d * in_h * in_w) * c + o.group * G;
    float best[G];
    int best_at[G];
#pragma unroll
    for (int k = 0; k < G; ++k) {
      best[k] = -INFINITY;
      best_at[k] = -1;
    }
    for (int t = 0; t < win.kernel[0]; ++t) {
      const Index d = o.d * win.stride[0] - win.pad[0] + t;
      if (d < 0 || d >= in_d) continue;
      for (int r = 0; r < win.kernel[1]; ++r) {
        const Index h = o.h * win.stride[1] - win.pad[1] + r;
        if (h < 0 || h >= in_h) continue;
        for (int s = 0; s < win.kernel[2]; ++s) {
          const Index w = o.w * win.stride[2] - win.pad[2] + s;
          if (w < 0 || w >= in_w) continue;
          const Pack<T, G> v = load_pack<T, G>(volume + ((d * in_h + h) * in_w + w) * c);
          const int position = (t * win.kernel[1] + r) * win.kernel[2] + s;
#pragma unroll
          for (int k = 0; k < G; ++k) {
            const float value = to_float(v.v[k]);
            // The CPU twin's rule: strictly greater replaces, so the first maximum stays.
            if (best_at[k] < 0 || value > best[k]) {
              best[k] = value;
              best_at[k] = position;
            }
          }
        }
      }
    }
    Pack<T, G> y_pack;
    Pack<uint8_t, G> argmax_pack;
#pragma unroll
    for (int k = 0; k < G; ++k) {
      y_pack.v[k] = from_float<T>(best[k]);
      argmax_pack.v[k] = static_cast<uint8_t>(best_at[k]);
    }
    store_pack(y + i * G, y_pack);
    store_pack(argmax + i * G, argmax_pack);
  }
}

// The outputs along one axis whose window covers input coordinate p: o * stride - pad <= p <= o * stride -
// pad + kernel - 1, within [0, outputs). Empty when first > last.
template <typename Index>
__device__ __forceinline__ void covering_outputs(Index p, int kernel, int stride, int pad, Index outputs, Index& first,
                                                 Index& last) {
  const Index high = p + pad, low = high - kernel + 1;
  first = low <= 0 ? Index(0) : (low + stride - 1) / stride;
  last = min(high / stride, outputs - 1);
}

template <typename T, int G, typename Index>
__global__ void maxpool3d_backward_kernel(const T* __restrict__ dy, const uint8_t* __restrict__ argmax, Volume in,
                                          Volume out, Window3 win, T* __restrict__ dx) {
  const Index groups = Index(in.c / G), c = Index(in.c);
  const Index in_h = Index(in.h), in_w = Index(in.w);
  const Index out_d = Index(out.d), out_h = Index(out.h), out_w = Index(out.w);
  const Index total = Index(in.n * in.d * in.h * in.w) * groups;
  const Index step = Index(gridDim.x) * Index(blockDim.x);
  for (Index i = Index(blockIdx.x) * Index(blockDim.x) + Index(threadIdx.x); i < total; i += step) {
    const Item<Index> p = item_of(i, in, groups);
    Index d0, d1, h0, h1, w0, w1;
    covering_outputs(p.d, win.kernel[0], win.stride[0], win.pad[0], out_d, d0, d1);
    covering_outputs(p.h, win.kernel[1], win.stride[1], win.pad[1], out_h, h0, h1);
    covering_outputs(p.w, win.kernel[2], win.stride[2], win.pad[2], out_w, w0, w1);
    const Index channel = p.group * G;
    float sum[G];
#pragma unroll
    for (int k = 0; k < G; ++k) sum[k] = 0.0f;
    // Ascending output order, as the CPU twin adds them: the fp32 sums are the same bit for bit.
    // p's position in each covering window, built up axis by axis as (t * kernel_h + r) * kernel_w + q.
    for (Index od = d0; od <= d1; ++od) {
      const int t = static_cast<int>(p.d - (od * win.stride[0] - win.pad[0]));
      for (Index oh = h0; oh <= h1; ++oh) {
        const int tr = t * win.kernel[1] + static_cast<int>(p.h - (oh * win.stride[1] - win.pad[1]));
        for (Index ow = w0; ow <= w1; ++ow) {
          const int position = tr * win.kernel[2] + static_cast<int>(p.w - (ow * win.stride[2] - win.pad[2]));
          const Index at = (((p.n * out_d + od) * out_h + oh) * out_w + ow) * c + channel;
          const Pack<uint8_t, G> winners = load_pack<uint8_t, G>(argmax + at);
          const Pack<T, G> grads = load_pack<T, G>(dy + at);
#pragma unroll
          for (int k = 0; k < G; ++k)
            if (winners.v[k] == position) sum[k] += to_float(grads.v[k]);
        }
      }
    }
    Pack<T, G> dx_pack;
#pragma unroll
    for (int k = 0; k < G; ++k) dx_pack.v[k] = from_float<T>(sum[k]);
    store_pack(dx + i * G, dx_pack);
  }
}

// 16-byte accesses: 4 f32 or 8 bf16 channels per thread.
template <typename T>
constexpr int kWideGroup = 16 / static_cast<int>(sizeof(T));

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Whether a thread may take kWideGroup<T> channels: C a multiple of it, every pointer aligned to its pack.
template <typename T>
bool wide_groups_fit(int64_t c, const T* a, const T* b, const uint8_t* positions) {
  constexpr int g = kWideGroup<T>;
  return c % g == 0 && aligned(a, g * sizeof(T)) && aligned(b, g * sizeof(T)) && aligned(positions, g);
}

// 32-bit index math when every element offset, and the grid-stride loop's last increment, stay below 2^31.
bool fits_32bit(Volume in, Volume out) {
  const int64_t limit = INT32_MAX - kMaxBlocks * kThreads;
  return in.numel() <= limit && out.numel() <= limit;
}

// Calls launch(group, index) with group an std::integral_constant of the channels per thread and index
// a value of the index type: the widest group and the narrowest index the problem allows.
template <typename T, typename Launch>
void with_layout(bool wide, bool small_index, Launch&& launch) {
  using Wide = std::integral_constant<int, kWideGroup<T>>;
  using Single = std::integral_constant<int, 1>;
  if (wide && small_index)
    launch(Wide{}, int32_t{});
  else if (wide)
    launch(Wide{}, int64_t{});
  else if (small_index)
    launch(Single{}, int32_t{});
  else
    launch(Single{}, int64_t{});
}

}  // namespace

template <typename T>
cudaError_t maxpool3d_forward(const T* x, Volume in, Volume out, Window3 window, T* y, uint8_t* argmax,
                              cudaStream_t stream) {
  if (out.numel() == 0) return cudaSuccess;
  const bool wide = wide_groups_fit(in.c, x, y, argmax);
  with_layout<T>(wide, fits_32bit(in, out), [&](auto group, auto index) {
    constexpr int g = decltype(group)::value;
    maxpool3d_forward_kernel<T, g, decltype(index)>
        <<<grid_for(out.numel() / g), kThreads, 0, stream>>>(x, in, out, window, y, argmax);
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t maxpool3d_backward(const T* dy, const uint8_t* argmax, Volume in, Volume out, Window3 window, T* dx,
                               cudaStream_t stream) {
  if (in.numel() == 0) return cudaSuccess;
  const bool wide = wide_groups_fit(in.c, dy, dx, argmax);
  with_layout<T>(wide, fits_32bit(in, out), [&](auto group, auto index) {
    constexpr int g = decltype(group)::value;
    maxpool3d_backward_kernel<T, g, decltype(index)>
        <<<grid_for(in.numel() / g), kThreads, 0, stream>>>(dy, argmax, in, out, window, dx);
  });
  return cudaGetLastError();
}

template cudaError_t maxpool3d_forward<float>(const float*, Volume, Volume, Window3, float*, uint8_t*, cudaStream_t);
template cudaError_t maxpool3d_forward<__nv_bfloat16>(const __nv_bfloat16*, Volume, Volume, Window3, __nv_bfloat16*,
                                                      uint8_t*, cudaStream_t);
template cudaError_t maxpool3d_backward<float>(const float*, const uint8_t*, Volume, Volume, Window3, float*,
                                               cudaStream_t);
template cudaError_t maxpool3d_backward<__nv_bfloat16>(const __nv_bfloat16*, const uint8_t*, Volume, Volume, Window3,
                                                       __nv_bfloat16*, cudaStream_t);

}  // namespace dsmil::kernels
