// GradientReducer: bucket layout, the hooks that copy a final gradient into its bucket, and in-order starts
// (every rank must issue the same sums in the same order, so a bucket starts only after all before it).
#include "nn/data_parallel.h"

#include <fmt/format.h>

namespace dsmil::nn {

GradientReducer::GradientReducer(std::vector<NamedParameter> params, dist::Communicator& comm, size_t bucket_bytes)
    : params_(std::move(params)), comm_(comm), copied_(params_.size(), false) {
  std::vector<std::vector<Slot>> layout(1);
  std::vector<size_t> sizes(1, 0);
  for (size_t i = params_.size(); i-- > 0;) {
    const size_t n = static_cast<size_t>(params_[i].variable->value().numel());
    if (sizes.back() > 0 && (sizes.back() + n) * sizeof(float) > bucket_bytes) {
      layout.emplace_back();
      sizes.push_back(0);
    }
    layout.back().push_back({i, sizes.back()});
    sizes.back() += n;
  }
  const Device device = params_.empty() ? Device::CPU : params_.front().variable->value().device();
  for (size_t b = 0; b < layout.size(); ++b) {
    if (sizes[b] == 0) continue;
    buckets_.push_back({Tensor::empty({static_cast<int64_t>(sizes[b])}, DType::F32, device), layout[b], 0});
    for (size_t s = 0; s < layout[b].size(); ++s)
      params_[layout[b][s].parameter].variable->on_grad_ready(
          [this, bucket = buckets_.size() - 1, s] { on_ready(bucket, s); });
  }
}

GradientReducer::~GradientReducer() {
  for (NamedParameter& p : params_) p.variable->on_grad_ready(nullptr);
}

void GradientReducer::on_ready(size_t bucket, size_t slot) {
  Bucket& b = buckets_[bucket];
  const Slot& s = b.slots[slot];
  const Variable& p = *params_[s.parameter].variable;
  const int64_t n = p.value().numel();
  b.values.narrow0(static_cast<int64_t>(s.offset), static_cast<int64_t>(s.offset) + n)
      .view(p.shape())
      .copy_from(p.grad());
  copied_[s.parameter] = true;
  if (++b.ready == b.slots.size()) start_ready_buckets();
}

void GradientReducer::start_ready_buckets() {
  while (next_to_start_ < buckets_.size() && buckets_[next_to_start_].ready == buckets_[next_to_start_].slots.size()) {
    Bucket& b = buckets_[next_to_start_++];
    comm_.sum_in_background(b.values);
  }
}

void GradientReducer::finish() {
  started_during_last_backward_ = next_to_start_;
  for (Bucket& b : buckets_) {
    for (const Slot& s : b.slots) {
      if (copied_[s.parameter]) continue;
      const Variable& p = *params_[s.parameter].variable;
      b.values.narrow0(static_cast<int64_t>(s.offset), static_cast<int64_t>(s.offset) + p.value().numel()).fill(0.0f);
      ++b.ready;
    }
  }
  for (; next_to_start_ < buckets_.size(); ++next_to_start_) comm_.sum_in_background(buckets_[next_to_start_].values);
  comm_.wait_for_sums();
  for (Bucket& b : buckets_) {
    for (const Slot& s : b.slots) {
      const Variable& p = *params_[s.parameter].variable;
      p.zero_grad();
      p.accumulate_grad(
          b.values.narrow0(static_cast<int64_t>(s.offset), static_cast<int64_t>(s.offset) + p.value().numel())
              .view(p.shape()));
      copied_[s.parameter] = false;
    }
    b.ready = 0;
  }
  next_to_start_ = 0;
}

}  // namespace dsmil::nn
