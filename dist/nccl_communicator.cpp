// NcclCommunicator: ncclCommInitRank from a file rendezvous, ncclCommSplit for the small collectives, the
// gradient sums on a side stream of the device facade, ordered after the ops and back.
#include "dist/nccl_communicator.h"

#include <fmt/format.h>
#include <nccl.h>

#include <optional>

#include "tensor/device.h"

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

cudaStream_t compute_stream() { return static_cast<cudaStream_t>(device::cuda_compute_stream()); }

}  // namespace

struct NcclCommunicator::State {
  RankInfo ranks;
  ncclComm_t gradients = nullptr, small = nullptr;
  std::optional<device::SideStream> gradient_stream;
};

NcclCommunicator::NcclCommunicator(const RankInfo& ranks) : state_(std::make_unique<State>()) {
  state_->ranks = ranks;
  const std::string context = fmt::format("NCCL start (rank {} of {})", ranks.rank, ranks.world_size);
  device::select_cuda_device(ranks.local_rank);
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
  state_->gradient_stream.emplace();
}

NcclCommunicator::~NcclCommunicator() {
  // The gradient sums finish before their communicator goes. Destructors must not throw: NCCL's results are
  // deliberately not checked.
  state_->gradient_stream.reset();
  ncclCommDestroy(state_->small);
  ncclCommDestroy(state_->gradients);
}

int NcclCommunicator::rank() const { return state_->ranks.rank; }
int NcclCommunicator::world_size() const { return state_->ranks.world_size; }

void NcclCommunicator::sum_in_background(Tensor& t) {
  if (t.device() != Device::CUDA || t.dtype() != DType::F32)
    throw Error(fmt::format("NcclCommunicator::sum_in_background: CUDA F32 tensors only, got {}", t.describe()));
  state_->gradient_stream->wait_for_compute();
  // Formatted only when the call fails: this runs for every bucket of every step.
  DSMIL_NCCL_CHECK(ncclAllReduce(t.f32(), t.f32(), static_cast<size_t>(t.numel()), ncclFloat32, ncclSum,
                                 state_->gradients, static_cast<cudaStream_t>(state_->gradient_stream->native())),
                   fmt::format("gradient sum of {}", t.describe()));
}

void NcclCommunicator::wait_for_sums() { state_->gradient_stream->join_compute(); }

namespace {

// Runs `collective(send, receive)` on the ops' stream over device copies of `values` (receive holds
// receive_count doubles) and returns the received values.
template <typename Collective>
std::vector<double> small_collective(const char* what, const std::vector<double>& values, size_t receive_count,
                                     Collective collective) {
  device::DeviceMemory send(values.size() * sizeof(double), device::MemorySource::pool),
      receive(receive_count * sizeof(double), device::MemorySource::pool);
  send.upload(0, values.data(), send.bytes());
  DSMIL_NCCL_CHECK(collective(send.as<double>(), receive.as<double>(), compute_stream()),
                   fmt::format("{} of {} values", what, values.size()));
  std::vector<double> out(receive_count);
  receive.download(0, out.data(), receive.bytes());
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
