// CUDA ops of the MIL head (F32): masked attention softmax with its statistics, top-k selection,
// gather_mean, and the bag contractions weighted_sum / dot / outer (kernels/masked_softmax.cu,
// kernels/topk_gather.cu, kernels/bag_contractions.cu).
#include "kernels/bag_contractions.h"
#include "kernels/masked_softmax.h"
#include "kernels/topk_gather.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

namespace {

void check_f32(const char* op, const Tensor& t, int64_t ndim, const char* name) {
  check_on_device(op, t, name);
  check_ndim(op, t, ndim, name);
  check_dtype(op, t, DType::F32, name);
}

void check_mask(const char* op, const Tensor& mask, const Tensor& like) {
  check_on_device(op, mask, "mask");
  check_dtype(op, mask, DType::I32, "mask");
  check_shape(op, mask, like.shape(), "mask");
}

}  // namespace

MaskedSoftmaxOut masked_softmax(const Tensor& e, const Tensor& mask, float temperature) {
  const char* op = "masked_softmax";
  check_f32(op, e, 2, "e");
  check_mask(op, mask, e);
  const int64_t bags = e.size(0), n = e.size(1);
  MaskedSoftmaxOut out{empty_device(e.shape(), DType::F32), empty_device({bags, 3}, DType::F32)};
  DSMIL_CUDA_CHECK(
      kernels::masked_softmax(e.f32(), mask.i32(), bags, n, temperature, out.a.f32(), out.stats.f32(), stream()),
      op_context(op, {{"e", &e}, {"mask", &mask}}));
  return out;
}

Tensor masked_softmax_backward(const Tensor& da, const Tensor& a, float temperature) {
  const char* op = "masked_softmax_backward";
  check_f32(op, da, 2, "da");
  check_f32(op, a, 2, "a");
  check_same_shape(op, da, a);
  Tensor de = empty_device(a.shape(), DType::F32);
  DSMIL_CUDA_CHECK(
      kernels::masked_softmax_backward(da.f32(), a.f32(), a.size(0), a.size(1), temperature, de.f32(), stream()),
      op_context(op, {{"da", &da}, {"a", &a}}));
  return de;
}

Tensor topk_indices(const Tensor& score, const Tensor& mask, int k) {
  const char* op = "topk_indices";
  check_f32(op, score, 2, "score");
  check_mask(op, mask, score);
  if (k < 1) throw ShapeError(fmt::format("{}: k must be >= 1, got {}", op, k));
  Tensor idx = empty_device({score.size(0), k}, DType::I32);
  DSMIL_CUDA_CHECK(kernels::topk_indices(score.f32(), mask.i32(), score.size(0), score.size(1), k, idx.i32(), stream()),
                   op_context(op, {{"score", &score}, {"mask", &mask}}));
  return idx;
}

Tensor gather_mean(const Tensor& x, const Tensor& idx) {
  const char* op = "gather_mean";
  check_f32(op, x, 3, "x");
  check_on_device(op, idx, "idx");
  check_ndim(op, idx, 2, "idx");
  check_dtype(op, idx, DType::I32, "idx");
  if (idx.size(0) != x.size(0))
    throw ShapeError(fmt::format("{}: idx {} and x {} have different bag counts", op, idx.describe(), x.describe()));
  const int64_t bags = x.size(0), n = x.size(1), features = x.size(2);
  Tensor y = empty_device({bags, features}, DType::F32);
  DSMIL_CUDA_CHECK(kernels::gather_mean(x.f32(), idx.i32(), bags, n, idx.size(1), features, y.f32(), stream()),
                   op_context(op, {{"x", &x}, {"idx", &idx}}));
  return y;
}

Tensor gather_mean_backward(const Tensor& dy, const Tensor& idx, int64_t n) {
  const char* op = "gather_mean_backward";
  check_f32(op, dy, 2, "dy");
  check_on_device(op, idx, "idx");
  check_ndim(op, idx, 2, "idx");
  check_dtype(op, idx, DType::I32, "idx");
  if (idx.size(0) != dy.size(0) || n < 0)
    throw ShapeError(fmt::format("{}: idx {}, dy {} and n = {} do not fit", op, idx.describe(), dy.describe(), n));
  const int64_t bags = dy.size(0), features = dy.size(1);
  Tensor dx = empty_device({bags, n, features}, DType::F32);
  DSMIL_CUDA_CHECK(
      kernels::gather_mean_backward(dy.f32(), idx.i32(), bags, n, idx.size(1), features, dx.f32(), stream()),
      op_context(op, {{"dy", &dy}, {"idx", &idx}}));
  return dx;
}

Tensor bag_weighted_sum(const Tensor& a, const Tensor& v) {
  const char* op = "bag_weighted_sum";
  check_f32(op, a, 2, "a");
  check_f32(op, v, 3, "v");
  check_shape(op, v, {a.size(0), a.size(1), v.size(2)}, "v");
  Tensor y = empty_device({v.size(0), v.size(2)}, DType::F32);
  DSMIL_CUDA_CHECK(kernels::bag_weighted_sum(a.f32(), v.f32(), v.size(0), v.size(1), v.size(2), y.f32(), stream()),
                   op_context(op, {{"a", &a}, {"v", &v}}));
  return y;
}

Tensor bag_dot(const Tensor& q, const Tensor& m) {
  const char* op = "bag_dot";
  check_f32(op, q, 3, "q");
  check_f32(op, m, 2, "m");
  check_shape(op, m, {q.size(0), q.size(2)}, "m");
  Tensor y = empty_device({q.size(0), q.size(1)}, DType::F32);
  DSMIL_CUDA_CHECK(kernels::bag_dot(q.f32(), m.f32(), q.size(0), q.size(1), q.size(2), y.f32(), stream()),
                   op_context(op, {{"q", &q}, {"m", &m}}));
  return y;
}

Tensor bag_outer(const Tensor& a, const Tensor& m) {
  const char* op = "bag_outer";
  check_f32(op, a, 2, "a");
  check_f32(op, m, 2, "m");
  if (m.size(0) != a.size(0))
    throw ShapeError(fmt::format("{}: a {} and m {} have different bag counts", op, a.describe(), m.describe()));
  Tensor y = empty_device({a.size(0), a.size(1), m.size(1)}, DType::F32);
  DSMIL_CUDA_CHECK(kernels::bag_outer(a.f32(), m.f32(), a.size(0), a.size(1), m.size(1), y.f32(), stream()),
                   op_context(op, {{"a", &a}, {"m", &m}}));
  return y;
}

}  // namespace dsmil::cuda
