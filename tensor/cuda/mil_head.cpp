// CUDA ops of the MIL head (F32): masked attention softmax with its statistics, top-k selection,
// gather_mean, and the bag contractions weighted_sum / dot / outer (kernels/masked_softmax.cu,
// kernels/topk_gather.cu, kernels/bag_contractions.cu).
#include "kernels/bag_contractions.h"
#include "kernels/masked_softmax.h"
#include "kernels/topk_gather.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

MaskedSoftmaxOut masked_softmax(const Tensor& e, const Tensor& mask, float temperature) {
  const char* op = "masked_softmax";
  const int64_t bags = e.size(0), n = e.size(1);
  MaskedSoftmaxOut out{empty_device(e.shape(), DType::F32), empty_device({bags, 3}, DType::F32)};
  DSMIL_CUDA_CHECK(
      kernels::masked_softmax(e.f32(), mask.i32(), bags, n, temperature, out.a.f32(), out.stats.f32(), stream()),
      op_context(op, {{"e", &e}, {"mask", &mask}}));
  return out;
}

Tensor masked_softmax_backward(const Tensor& da, const Tensor& a, float temperature) {
  const char* op = "masked_softmax_backward";
  Tensor de = empty_device(a.shape(), DType::F32);
  DSMIL_CUDA_CHECK(
      kernels::masked_softmax_backward(da.f32(), a.f32(), a.size(0), a.size(1), temperature, de.f32(), stream()),
      op_context(op, {{"da", &da}, {"a", &a}}));
  return de;
}

Tensor topk_indices(const Tensor& score, const Tensor& mask, int k) {
  const char* op = "topk_indices";
  Tensor idx = empty_device({score.size(0), k}, DType::I32);
  DSMIL_CUDA_CHECK(kernels::topk_indices(score.f32(), mask.i32(), score.size(0), score.size(1), k, idx.i32(), stream()),
                   op_context(op, {{"score", &score}, {"mask", &mask}}));
  return idx;
}

Tensor gather_mean(const Tensor& x, const Tensor& idx) {
  const char* op = "gather_mean";
  const int64_t bags = x.size(0), n = x.size(1), features = x.size(2);
  Tensor y = empty_device({bags, features}, DType::F32);
  DSMIL_CUDA_CHECK(kernels::gather_mean(x.f32(), idx.i32(), bags, n, idx.size(1), features, y.f32(), stream()),
                   op_context(op, {{"x", &x}, {"idx", &idx}}));
  return y;
}

Tensor gather_mean_backward(const Tensor& dy, const Tensor& idx, int64_t n) {
  const char* op = "gather_mean_backward";
  const int64_t bags = dy.size(0), features = dy.size(1);
  Tensor dx = empty_device({bags, n, features}, DType::F32);
  DSMIL_CUDA_CHECK(
      kernels::gather_mean_backward(dy.f32(), idx.i32(), bags, n, idx.size(1), features, dx.f32(), stream()),
      op_context(op, {{"dy", &dy}, {"idx", &idx}}));
  return dx;
}

Tensor bag_weighted_sum(const Tensor& a, const Tensor& v) {
  const char* op = "bag_weighted_sum";
  Tensor y = empty_device({v.size(0), v.size(2)}, DType::F32);
  DSMIL_CUDA_CHECK(kernels::bag_weighted_sum(a.f32(), v.f32(), v.size(0), v.size(1), v.size(2), y.f32(), stream()),
                   op_context(op, {{"a", &a}, {"v", &v}}));
  return y;
}

Tensor bag_dot(const Tensor& q, const Tensor& m) {
  const char* op = "bag_dot";
  Tensor y = empty_device({q.size(0), q.size(1)}, DType::F32);
  DSMIL_CUDA_CHECK(kernels::bag_dot(q.f32(), m.f32(), q.size(0), q.size(1), q.size(2), y.f32(), stream()),
                   op_context(op, {{"q", &q}, {"m", &m}}));
  return y;
}

Tensor bag_outer(const Tensor& a, const Tensor& m) {
  const char* op = "bag_outer";
  Tensor y = empty_device({a.size(0), a.size(1), m.size(1)}, DType::F32);
  DSMIL_CUDA_CHECK(kernels::bag_outer(a.f32(), m.f32(), a.size(0), a.size(1), m.size(1), y.f32(), stream()),
                   op_context(op, {{"a", &a}, {"m", &m}}));
  return y;
}

}  // namespace dsmil::cuda
