// NcclCommunicator: ncclCommInitRank from a file rendezvous, ncclCommSplit for the small collectives,
// events that order the gradient stream after the compute stream and back.
#include "dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <fmt/format.h>

#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"

namespace dsmil::dist {

namespace {

// Every NCCL call goes through this: the call and what it was for, as a typed error.
#define DSMIL_NCCL_CHECK(call, context)                                                                                \
  do {                                                                                                                 \
    const ncclResult_t dsmil_nccl_result = (call);                                                                     \
    if (dsmil_nccl_result != ncclSuccess)                                                                              \
      throw DeviceError(fmt::format("{}: {} failed: {} ({})", (context), #call, ncclGetErrorString(dsmil_nccl_result), \
                                    ncclGetLastError(nullptr)));                                                       \
  } while (0)

constexpr std::chrono::seconds kRendezvousTimeout{300};

}  // namespace

struct NcclCommunicator::State {
  RankInfo ranks;
  ncclComm_t gradients = nullptr, small = nullptr;
  cudaStream_t gradient_stream = nullptr;
  cudaEvent_t compute_done = nullptr, sums_done = nullptr;
};

NcclCommunicator::NcclCommunicator(const RankInfo& ranks) : state_(std::make_unique<State>()) {
  state_->ranks = ranks;
  const std::string context = fmt::format("NCCL start (rank {} of {})", ranks.rank, ranks.world_size);
  int devices = 0;
  DSMIL_CUDA_CHECK(cudaGetDeviceCount(&devices), context);
  DSMIL_CUDA_CHECK(cudaSetDevice(ranks.local_rank % devices), context);
  const std::filesystem::path path = rendezvous_path();
  ncclUniqueId id;
  if (ranks.rank == 0) {
    DSMIL_NCCL_CHECK(ncclGetUniqueId(&id), context);
    publish_rendezvous(path, std::string(id.internal, sizeof id.internal));
  } else {
    const std::string bytes = await_rendezvous(path, sizeof id.internal, kRendezvousTimeout);
    std::copy(bytes.begin(), bytes.end(), id.internal);
  }
  DSMIL_NCCL_CHECK(ncclCommInitRank(&state_->gradients, ranks.world_size, id, ranks.rank), context);
  DSMIL_NCCL_CHECK(ncclCommSplit(state_->gradients, 0, ranks.rank, &state_->small, nullptr), context);
  DSMIL_CUDA_CHECK(cudaStreamCreateWithFlags(&state_->gradient_stream, cudaStreamNonBlocking), context);
  DSMIL_CUDA_CHECK(cudaEventCreateWithFlags(&state_->compute_done, cudaEventDisableTiming), context);
  DSMIL_CUDA_CHECK(cudaEventCreateWithFlags(&state_->sums_done, cudaEventDisableTiming), context);
}

NcclCommunicator::~NcclCommunicator() {
  // Destructors must not throw: the results of these calls are deliberately not checked.
  cudaStreamSynchronize(state_->gradient_stream);
  ncclCommDestroy(state_->small);
  ncclCommDestroy(state_->gradients);
  cudaEventDestroy(state_->compute_done);
  cudaEventDestroy(state_->sums_done);
  cudaStreamDestroy(state_->gradient_stream);
}

int NcclCommunicator::rank() const { return state_->ranks.rank; }
int NcclCommunicator::world_size() const { return state_->ranks.world_size; }

void NcclCommunicator::sum_in_background(Tensor& t) {
  // Formatted only when a call fails: this runs for every bucket of every step.
  const auto context = [&] { return fmt::format("gradient sum of {}", t.describe()); };
  if (t.device() != Device::CUDA || t.dtype() != DType::F32)
    throw Error(fmt::format("NcclCommunicator::sum_in_background: CUDA F32 tensors only, got {}", t.describe()));
  DSMIL_CUDA_CHECK(cudaEventRecord(state_->compute_done, cuda::stream()), context());
  DSMIL_CUDA_CHECK(cudaStreamWaitEvent(state_->gradient_stream, state_->compute_done), context());
  DSMIL_NCCL_CHECK(ncclAllReduce(t.f32(), t.f32(), static_cast<size_t>(t.numel()), ncclFloat32, ncclSum,
                                 state_->gradients, state_->gradient_stream),
                   context());
}

void NcclCommunicator::wait_for_sums() {
  const char* context = "waiting for the gradient sums";
  DSMIL_CUDA_CHECK(cudaEventRecord(state_->sums_done, state_->gradient_stream), context);
  DSMIL_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), state_->sums_done), context);
}

namespace {

// Runs `collective(send, receive)` on the compute stream over device copies of `values` (receive holds
// receive_count doubles) and returns the received values.
template <typename Collective>
std::vector<double> small_collective(const char* what, const std::vector<double>& values, size_t receive_count,
                                     Collective collective) {
  const auto context = [&] { return fmt::format("{} of {} values", what, values.size()); };
  cuda::DeviceBuffer send(values.size() * sizeof(double)), receive(receive_count * sizeof(double));
  const cudaStream_t s = cuda::stream();
  DSMIL_CUDA_CHECK(cudaMemcpyAsync(send.data(), values.data(), send.bytes(), cudaMemcpyHostToDevice, s), context());
  DSMIL_NCCL_CHECK(collective(send.as<double>(), receive.as<double>(), s), context());
  std::vector<double> out(receive_count);
  DSMIL_CUDA_CHECK(cudaMemcpyAsync(out.data(), receive.data(), receive.bytes(), cudaMemcpyDeviceToHost, s), context());
  DSMIL_CUDA_CHECK(cudaStreamSynchronize(s), context());
  return out;
}

}  // namespace

std::vector<double> NcclCommunicator::sum(const std::vector<double>& values) {
  return small_collective("sum over ranks", values, values.size(), [&](double* send, double* receive, cudaStream_t s) {
    return ncclAllReduce(send, receive, values.size(), ncclFloat64, ncclSum, state_->small, s);
  });
}

std::vector<double> NcclCommunicator::gather(const std::vector<double>& values) {
  return small_collective("gather over ranks", values, values.size() * world_size(),
                          [&](double* send, double* receive, cudaStream_t s) {
                            return ncclAllGather(send, receive, values.size(), ncclFloat64, state_->small, s);
                          });
}

}  // namespace dsmil::dist
