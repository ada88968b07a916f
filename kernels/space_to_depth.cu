// Space-to-depth over H and W: xs[N, D, Hs, Ws, Cs] gathered from x[N, D, H, W, C] (zero padding folded in),
// and the adjoint gather x from xs. Pure copies, done in the widest words that C and Cs allow.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/space_to_depth.h"

namespace dsmil::kernels {

namespace {

// The fold in words of one type: a run of C channels is run_words words, a folded pixel pixel_words.
// One thread per written word, so that a warp writes contiguous memory: one thread per folded pixel
// copying element by element wrote 2-byte pieces 32 bytes apart per instruction and ran at 11% of copy
// bandwidth (158 us for the stem's fold in bf16 on the H200, `dsmil bench --kernel space_to_depth`).
struct WordFold {
  SpaceToDepth f;
  int64_t run_words, pixel_words;
};

template <typename Word, typename Index>
__global__ void space_to_depth_kernel(const Word* __restrict__ x, Word* __restrict__ xs, WordFold fold) {
  const SpaceToDepth& f = fold.f;
  const Index run_words = fold.run_words, pixel_words = fold.pixel_words, blocks = f.block_h * f.block_w;
  const Index folded_w = f.folded_w, folded_h = f.folded_h, block_w = f.block_w;
  const Index n = f.x.n * f.x.d * f.folded_h * f.folded_w * fold.pixel_words;
  for (Index i = blockIdx.x * Index(blockDim.x) + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index word = i % pixel_words, pixel = i / pixel_words;
    const Index block = word / run_words;
    Word value{};
    if (block < blocks) {
      const Index j = pixel % folded_w, rest = pixel / folded_w;
      const Index g = rest % folded_h, plane = rest / folded_h;  // plane = n * D + d
      const int64_t h = int64_t(f.block_h) * g + block / block_w - f.pad_h;
      const int64_t w = int64_t(f.block_w) * j + block % block_w - f.pad_w;
      if (h >= 0 && h < f.x.h && w >= 0 && w < f.x.w)
        value = x[((int64_t(plane) * f.x.h + h) * f.x.w + w) * run_words + word % run_words];
    }
    xs[i] = value;
  }
}

template <typename Word, typename Index>
__global__ void depth_to_space_kernel(const Word* __restrict__ xs, Word* __restrict__ x, WordFold fold) {
  const SpaceToDepth& f = fold.f;
  const Index run_words = fold.run_words, width = f.x.w, height = f.x.h;
  const Index n = f.x.n * f.x.d * f.x.h * f.x.w * fold.run_words;
  for (Index i = blockIdx.x * Index(blockDim.x) + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index word = i % run_words, pixel = i / run_words;
    const Index w = pixel % width + Index(f.pad_w), rest = pixel / width;
    const Index h = rest % height + Index(f.pad_h), plane = rest / height;
    const Index g = h / Index(f.block_h), j = w / Index(f.block_w);
    Word value{};
    if (g < f.folded_h && j < f.folded_w) {
      const Index block = (h % Index(f.block_h)) * Index(f.block_w) + w % Index(f.block_w);
      value = xs[((int64_t(plane) * f.folded_h + g) * f.folded_w + j) * fold.pixel_words + block * run_words + word];
    }
    x[i] = value;
  }
}

enum class Direction { fold, unfold };

template <typename Word, typename Index>
cudaError_t launch(Direction direction, const void* from, void* to, const WordFold& fold, int64_t words,
                   cudaStream_t stream) {
  if (direction == Direction::fold)
    space_to_depth_kernel<Word, Index>
        <<<grid_for(words), kThreads, 0, stream>>>(static_cast<const Word*>(from), static_cast<Word*>(to), fold);
  else
    depth_to_space_kernel<Word, Index>
        <<<grid_for(words), kThreads, 0, stream>>>(static_cast<const Word*>(from), static_cast<Word*>(to), fold);
  return cudaGetLastError();
}

// 32-bit index arithmetic where every index fits (the model's folds), 64-bit otherwise.
template <typename Word>
cudaError_t launch_words(Direction direction, const void* from, void* to, const SpaceToDepth& f, int64_t element_bytes,
                         cudaStream_t stream) {
  const WordFold fold{f, f.x.c * element_bytes / int64_t(sizeof(Word)),
                      f.folded_c * element_bytes / int64_t(sizeof(Word))};
  const int64_t written = direction == Direction::fold ? f.folded_numel() : f.x.numel();
  const int64_t words = written * element_bytes / int64_t(sizeof(Word));
  const int64_t largest = (f.folded_numel() > f.x.numel() ? f.folded_numel() : f.x.numel()) * element_bytes;
  if (largest < (int64_t(1) << 31)) return launch<Word, uint32_t>(direction, from, to, fold, words, stream);
  return launch<Word, int64_t>(direction, from, to, fold, words, stream);
}

// The widest word (16, 8, 4 or 2 bytes) that divides a run of C channels, a folded pixel and both addresses.
cudaError_t copy_folded(Direction direction, const void* from, void* to, const SpaceToDepth& f, int64_t element_bytes,
                        cudaStream_t stream) {
  if (f.folded_numel() == 0 || f.x.numel() == 0) return cudaSuccess;
  const auto fits = [&](int64_t word) {
    return (f.x.c * element_bytes) % word == 0 && (f.folded_c * element_bytes) % word == 0 &&
           reinterpret_cast<uintptr_t>(from) % word == 0 && reinterpret_cast<uintptr_t>(to) % word == 0;
  };
  if (fits(16)) return launch_words<uint4>(direction, from, to, f, element_bytes, stream);
  if (fits(8)) return launch_words<uint2>(direction, from, to, f, element_bytes, stream);
  if (fits(4)) return launch_words<uint32_t>(direction, from, to, f, element_bytes, stream);
  return launch_words<uint16_t>(direction, from, to, f, element_bytes, stream);
}

}  // namespace

template <typename T>
cudaError_t space_to_depth(const T* x, T* xs, const SpaceToDepth& fold, cudaStream_t stream) {
  return copy_folded(Direction::fold, x, xs, fold, sizeof(T), stream);
}

template <typename T>
cudaError_t depth_to_space(const T* xs, T* x, const SpaceToDepth& fold, cudaStream_t stream) {
  return copy_folded(Direction::unfold, xs, x, fold, sizeof(T), stream);
}

template cudaError_t space_to_depth<float>(const float*, float*, const SpaceToDepth&, cudaStream_t);
template cudaError_t space_to_depth<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, const SpaceToDepth&,
                                                   cudaStream_t);
template cudaError_t depth_to_space<float>(const float*, float*, const SpaceToDepth&, cudaStream_t);
template cudaError_t depth_to_space<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, const SpaceToDepth&,
                                                   cudaStream_t);

}  // namespace dsmil::kernels
