// 16-byte access for the memory-bound kernels: W consecutive elements of T (float or bf16) loaded as or
// stored from floats in aligned 16-byte packs (4 f32 / 8 bf16 per instruction), and the alignment test.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "kernels/common.cuh"

namespace dsmil::kernels {

constexpr int kVectorBytes = 16;

// Elements of T in one 16-byte access.
template <typename T>
constexpr int kVectorWidth = kVectorBytes / static_cast<int>(sizeof(T));

// V consecutive elements moved by one aligned load or store of sizeof(T) * V bytes.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Elements per access for W elements: whole 16-byte packs when W fills them, else one at a time.
template <typename T, int W>
constexpr int pack_width() {
  return (W * sizeof(T)) % kVectorBytes == 0 ? kVectorWidth<T> : 1;
}

// out[0, W) = p[0, W) as floats; p aligned to 16 bytes when W * sizeof(T) is a multiple of 16.
template <typename T, int W>
__device__ __forceinline__ void load_floats(const T* p, float* out) {
  constexpr int kPack = pack_width<T, W>();
#pragma unroll
  for (int at = 0; at < W; at += kPack) {
    const Pack<T, kPack> pack = *reinterpret_cast<const Pack<T, kPack>*>(p + at);
#pragma unroll
    for (int k = 0; k < kPack; ++k) out[at + k] = to_float(pack.v[k]);
  }
}

// p[0, W) = in[0, W) converted to T; the same alignment as load_floats.
template <typename T, int W>
__device__ __forceinline__ void store_floats(T* p, const float* in) {
  constexpr int kPack = pack_width<T, W>();
#pragma unroll
  for (int at = 0; at < W; at += kPack) {
    Pack<T, kPack> pack;
#pragma unroll
    for (int k = 0; k < kPack; ++k) pack.v[k] = from_float<T>(in[at + k]);
    *reinterpret_cast<Pack<T, kPack>*>(p + at) = pack;
  }
}

// True when every pointer is aligned to 16 bytes (tensors may be views at any element offset).
inline bool vector_aligned(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % kVectorBytes != 0) return false;
  return true;
}

}  // namespace dsmil::kernels
