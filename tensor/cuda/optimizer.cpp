// CUDA optimizer state updates on F32 tensors, in place: AdamW with decoupled weight decay and the EMA of
// weights, per tensor or over a list of tensors in a few launches (kernels/optimizer.cu).
#include <array>
#include <cmath>
#include <cstdint>

#include "kernels/optimizer.h"
#include "tensor/cuda/op_helpers.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/runtime.h"

namespace dsmil {

// The device side of a tensor list: one slot per tensor (its pointers that stay), the chunk of every block
// and, for the gradient norm, one fp64 partial sum per block. Uploaded once; a call whose tensors still have
// the data pointers and sizes it was built from (`built_from`) reuses it, so a step uploads nothing.
struct MultiTensorTable {
  MultiTensorTable(size_t slot_bytes, size_t blocks, bool with_partial_sums)
      : slots(slot_bytes),
        chunks(blocks * sizeof(kernels::TensorChunk)),
        partial_sums(with_partial_sums ? blocks * sizeof(double) : 0) {}

  std::vector<uintptr_t> built_from;
  std::vector<int64_t> first_block;  // block of each tensor's first chunk, then the number of blocks
  cuda::DeviceBuffer slots, chunks, partial_sums;

  // The launch over tensors [first_tensor, first_tensor + kTensorsPerLaunch) (fewer at the end).
  kernels::ChunkRange range(size_t first_tensor) const {
    const size_t tensors = first_block.size() - 1;
    const size_t end = std::min(tensors, first_tensor + kernels::kTensorsPerLaunch);
    return {chunks.as<kernels::TensorChunk>(), first_block[first_tensor], first_block[end] - first_block[first_tensor],
            static_cast<int32_t>(first_tensor)};
  }
  int64_t blocks() const { return first_block.back(); }
};

namespace cuda {

namespace {

kernels::AdamWStep adamw_constants(const AdamWHyper& h) {
  const std::array<float, 7> c = adamw_step_constants(h);
  return {c[0], c[1], c[2], c[3], c[4], c[5], c[6]};
}

// Where the kernels read a step's constants instead of taking them by value (null: they take them).
template <typename T>
const T* device_constants(const Tensor& t) {
  return t.defined() ? reinterpret_cast<const T*>(t.f32()) : nullptr;
}

// `table` was built from `key` (each tensor's data pointers, size and, for AdamW, decay flag)?
bool table_fits(const std::shared_ptr<MultiTensorTable>& table, const std::vector<uintptr_t>& key) {
  return table && table->built_from == key;
}

// Uploads the slots and the chunk map of tensors of `numels` elements (one synchronising copy each; only
// when the list is new or a tensor got other storage).
template <typename Slot>
std::shared_ptr<MultiTensorTable> build_table(const std::vector<Slot>& slots, const std::vector<int64_t>& numels,
                                              std::vector<uintptr_t> key, bool with_partial_sums) {
  std::vector<kernels::TensorChunk> chunks;
  std::vector<int64_t> first_block;
  for (size_t t = 0; t < numels.size(); ++t) {
    first_block.push_back(static_cast<int64_t>(chunks.size()));
    for (int64_t begin = 0; begin < numels[t]; begin += kernels::kChunkElements)
      chunks.push_back(
          {static_cast<int32_t>(t), static_cast<int32_t>(std::min(kernels::kChunkElements, numels[t] - begin)), begin});
  }
  first_block.push_back(static_cast<int64_t>(chunks.size()));
  auto table = std::make_shared<MultiTensorTable>(slots.size() * sizeof(Slot), chunks.size(), with_partial_sums);
  copy_bytes(table->slots.data(), Device::CUDA, slots.data(), Device::CPU, table->slots.bytes());
  copy_bytes(table->chunks.data(), Device::CUDA, chunks.data(), Device::CPU, table->chunks.bytes());
  table->built_from = std::move(key);
  table->first_block = std::move(first_block);
  return table;
}

// Rebuilds the list's table when it changed.
void refresh_adamw_table(AdamWTensors& tensors) {
  std::vector<kernels::AdamWSlot> slots;
  std::vector<int64_t> numels;
  std::vector<uintptr_t> key;
  for (size_t i = 0; i < tensors.params.size(); ++i) {
    Tensor &param = *tensors.params[i], &m = *tensors.m[i], &v = *tensors.v[i];
    slots.push_back({param.f32(), m.f32(), v.f32(), tensors.decayed[i] ? 1 : 0});
    numels.push_back(param.numel());
    key.insert(key.end(), {reinterpret_cast<uintptr_t>(param.raw()), reinterpret_cast<uintptr_t>(m.raw()),
                           reinterpret_cast<uintptr_t>(v.raw()), static_cast<uintptr_t>(param.numel()),
                           static_cast<uintptr_t>(tensors.decayed[i])});
  }
  if (!table_fits(tensors.device_table, key)) tensors.device_table = build_table(slots, numels, std::move(key), true);
}

void refresh_ema_table(EmaTensors& tensors) {
  std::vector<kernels::EmaSlot> slots;
  std::vector<int64_t> numels;
  std::vector<uintptr_t> key;
  for (size_t i = 0; i < tensors.ema.size(); ++i) {
    Tensor& ema = *tensors.ema[i];
    const Tensor& value = *tensors.values[i];
    slots.push_back({ema.f32(), value.f32()});
    numels.push_back(ema.numel());
    key.insert(key.end(), {reinterpret_cast<uintptr_t>(ema.raw()), reinterpret_cast<uintptr_t>(value.raw()),
                           static_cast<uintptr_t>(ema.numel())});
  }
  if (!table_fits(tensors.device_table, key)) tensors.device_table = build_table(slots, numels, std::move(key), false);
}

}  // namespace

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h) {
  const char* op = "adamw_step";
  DSMIL_CUDA_CHECK(
      kernels::adamw(param.f32(), grad.f32(), m.f32(), v.f32(), param.numel(), adamw_constants(h), stream()),
      op_context(op, {{"param", &param}, {"grad", &grad}}));
}

void ema_update(Tensor& ema, const Tensor& value, float decay) {
  const char* op = "ema_update";
  DSMIL_CUDA_CHECK(kernels::ema(ema.f32(), value.f32(), ema.numel(), decay, stream()),
                   op_context(op, {{"ema", &ema}, {"value", &value}}));
}

// The gradients change every step, so they travel in each launch's parameters (kernels::GradPointers,
// copied by the driver at launch time): no pointer table to upload, no host buffer to keep alive until a
// copy ran, and no host synchronisation.
void multi_tensor_adamw(AdamWTensors& tensors, const std::vector<Tensor>& grads, const AdamWHyper& h,
                        float max_grad_norm, Tensor& grad_norm, const Tensor& constants_on_device) {
  const char* op = "multi_tensor_adamw";
  const size_t count = tensors.params.size();
  const kernels::AdamWStep step = adamw_constants(h);
  refresh_adamw_table(tensors);
  const MultiTensorTable& table = *tensors.device_table;

  std::vector<kernels::GradPointers> grads_per_launch((count + kernels::kTensorsPerLaunch - 1) /
                                                      kernels::kTensorsPerLaunch);
  for (size_t i = 0; i < count; ++i) {
    const Tensor& g = grads[i];
    grads_per_launch[i / kernels::kTensorsPerLaunch].grad[i % kernels::kTensorsPerLaunch] =
        g.defined() ? g.f32() : nullptr;
  }
  const auto context = [&] { return op_context(op, {{"params[0]", tensors.params.front()}}); };
  const bool clip = max_grad_norm > 0.0f;
  if (clip) {
    for (size_t launch = 0; launch < grads_per_launch.size(); ++launch)
      DSMIL_CUDA_CHECK(
          kernels::multi_tensor_sum_squares(table.range(launch * kernels::kTensorsPerLaunch), grads_per_launch[launch],
                                            table.partial_sums.as<double>(), stream()),
          context());
    DSMIL_CUDA_CHECK(
        kernels::multi_tensor_norm(table.partial_sums.as<double>(), table.blocks(), grad_norm.f32(), stream()),
        context());
  }
  for (size_t launch = 0; launch < grads_per_launch.size(); ++launch)
    DSMIL_CUDA_CHECK(kernels::multi_tensor_adamw(table.range(launch * kernels::kTensorsPerLaunch),
                                                 table.slots.as<kernels::AdamWSlot>(), grads_per_launch[launch], step,
                                                 device_constants<kernels::AdamWStep>(constants_on_device),
                                                 clip ? grad_norm.f32() : nullptr, max_grad_norm, stream()),
                     context());
}

void multi_tensor_ema(EmaTensors& tensors, float decay, const Tensor& decay_on_device) {
  const char* op = "multi_tensor_ema";
  refresh_ema_table(tensors);
  const MultiTensorTable& table = *tensors.device_table;
  // No per-step pointers, so the whole list is one launch whatever its length.
  const kernels::ChunkRange all{table.chunks.as<kernels::TensorChunk>(), 0, table.blocks(), 0};
  DSMIL_CUDA_CHECK(kernels::multi_tensor_ema(all, table.slots.as<kernels::EmaSlot>(), decay,
                                             device_constants<float>(decay_on_device), stream()),
                   op_context(op, {{"ema[0]", tensors.ema.front()}}));
}

}  // namespace cuda
}  // namespace dsmil
