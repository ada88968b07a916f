// CUDA matrix products c[M, N] = op(a) op(b) through cuBLASLt (f32, TF32 when the MathMode allows it, or bf16
// with fp32 accumulation), bias add y[M, N] = x + bias[N] and its gradient db[N] (kernels/bias.cu).
#include <map>
#include <mutex>
#include <tuple>

#include "kernels/bias.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

namespace {

// cuBLASLt's default assumption about its operands' alignment, and so the most a plan's key records.
constexpr uint32_t kGemmAlignmentCap = 256;

// One product's cuBLASLt description and the algorithm its heuristic picked for it, built once per key: the
// heuristic's query cost cublasGemmEx 60-70 us of host time on every call (notes/PERF.md).
class GemmPlan {
 public:
  using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, DType, cublasComputeType_t, uint32_t>;

  GemmPlan(const Key& key, const std::string& context) {
    const auto [m, n, k, transpose_a, transpose_b, dtype, compute, alignment] = key;
    const cudaDataType_t data_type = dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
    // Row-major c = op(a) op(b) is column-major c^T = op(b)^T op(a)^T, and a row-major matrix read as column-major
    // is its transpose: so b is cuBLASLt's first operand, each with its own flag, leading dimensions = row lengths.
    const cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                            op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    DSMIL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, compute, CUDA_R_32F), context);
    DSMIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof(op_b)),
                       context);
    DSMIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof(op_a)),
                       context);
    const int64_t ld_b = transpose_b ? k : n, ld_a = transpose_a ? m : k;
    DSMIL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_, data_type, transpose_b ? k : n, transpose_b ? n : k, ld_b),
                       context);
    DSMIL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_, data_type, transpose_a ? m : k, transpose_a ? k : m, ld_a),
                       context);
    DSMIL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c_, data_type, n, m, n), context);
    cublasLtMatmulPreference_t preference = nullptr;
    DSMIL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference), context);
    const size_t workspace = cublaslt().workspace_bytes;
    const cublasStatus_t status = [&] {
      cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                              &workspace, sizeof(workspace));
      for (const auto attribute :
           {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
        if (s == CUBLAS_STATUS_SUCCESS)
          s = cublasLtMatmulPreferenceSetAttribute(preference, attribute, &alignment, sizeof(alignment));
      if (s != CUBLAS_STATUS_SUCCESS) return s;
      cublasLtMatmulHeuristicResult_t result{};
      int returned = 0;
      s = cublasLtMatmulAlgoGetHeuristic(cublaslt().handle, desc_, b_, a_, c_, c_, preference, 1, &result, &returned);
      if (s == CUBLAS_STATUS_SUCCESS && returned == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
      algo_ = result.algo;
      return s;
    }();
    cublasLtMatmulPreferenceDestroy(preference);
    DSMIL_CUBLAS_CHECK(status, context + " (cuBLASLt's heuristic for this product)");
  }
  ~GemmPlan() {
    cublasLtMatrixLayoutDestroy(c_);
    cublasLtMatrixLayoutDestroy(a_);
    cublasLtMatrixLayoutDestroy(b_);
    cublasLtMatmulDescDestroy(desc_);
  }
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;

  // `context` gives the errors' context string, formatted only when the call failed.
  template <typename Context>
  void run(const void* a, const void* b, void* c, Context&& context) const {
    const float alpha = 1.0f, beta = 0.0f;
    const CublasLt& lt = cublaslt();
    DSMIL_CUBLAS_CHECK(cublasLtMatmul(lt.handle, desc_, &alpha, b, b_, a, a_, &beta, c, c_, c, c_, &algo_, lt.workspace,
                                      lt.workspace_bytes, stream()),
                       context());
  }

 private:
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
};

// A reference into the cache: its entries are never removed, and a map's elements stay put.
template <typename Context>
const GemmPlan& gemm_plan(const GemmPlan::Key& key, Context&& context) {
  static std::mutex mutex;
  static std::map<GemmPlan::Key, GemmPlan> plans;
  std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = plans.find(key); it != plans.end()) return it->second;
  return plans.try_emplace(key, key, context()).first->second;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const MathMode& mode) {
  const char* op = "matmul";
  const int64_t m = transpose_a ? a.size(1) : a.size(0);
  const int64_t k = transpose_a ? a.size(0) : a.size(1);
  const int64_t n = transpose_b ? b.size(0) : b.size(1);
  const auto context = [&] {
    return fmt::format("{} (transpose_a={}, transpose_b={})", op_context(op, {{"a", &a}, {"b", &b}}), transpose_a,
                       transpose_b);
  };
  Tensor c = empty_device({m, n}, a.dtype());
  if (c.numel() == 0) return c;
  if (k == 0) {
    c.fill(0.0f);
    return c;
  }
  const cublasComputeType_t compute =
      a.dtype() == DType::F32 && mode.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const GemmPlan::Key key{
      m,           n,         k,       transpose_a,
      transpose_b, a.dtype(), compute, common_alignment({a.raw(), b.raw(), c.raw()}, kGemmAlignmentCap)};
  gemm_plan(key, context).run(a.raw(), b.raw(), c.raw(), context);
  return c;
}

Tensor add_bias(const Tensor& x, const Tensor& bias) {
  const char* op = "add_bias";
  Tensor y = empty_device(x.shape(), x.dtype());
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::add_bias(ptr<T>(x), bias.f32(), ptr<T>(y), x.size(0), x.size(1), stream()),
                     op_context(op, {{"x", &x}, {"bias", &bias}}));
  });
  return y;
}

Tensor bias_backward(const Tensor& dy) {
  const char* op = "bias_backward";
  Tensor db = empty_device({dy.size(1)}, DType::F32);
  with_float_type(op, dy, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::bias_backward(ptr<T>(dy), db.f32(), dy.size(0), dy.size(1), stream()),
                     op_context(op, {{"dy", &dy}}));
  });
  return db;
}

}  // namespace dsmil::cuda
