// The compute devices as code outside tensor/ sees them, in every build: availability, synchronisation, device
// memory, the pool's figures, streams for libraries that queue their own GPU work, a clock of the device's progress,
// profiler ranges, the backend's versions and its convolution choices. Without the CUDA backend there is no CUDA
// device: the queries answer "none" (false, zeros, empty), what needs a device (memory, streams) throws DeviceError
// and the rest does nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace dsmil::device {

// A usable CUDA device is present (and the build has the CUDA backend).
bool cuda_available();
// Waits for the work queued on `device` (the CPU's is done when queued).
void synchronize(Device device);

// Memory of one device's tensors, in bytes: in use by live tensors, reserved (CUDA: from the driver by the pool;
// CPU: 0, the host block cache's spare blocks are not counted), and the most in use since the peak was last reset.
// CPU figures are the host block cache's whole blocks (tensor storage rounded up to a power of two).
struct MemoryUsage {
  uint64_t used = 0, reserved = 0, peak_used = 0;
};
MemoryUsage memory_usage(Device device);
// Starts peak_used afresh from the memory in use now.
void reset_memory_peak(Device device);

// Where DeviceMemory comes from. `pool`: the tensors' stream-ordered pool, given back in stream order (cheap enough
// for scratch taken at every step). `dedicated`: cudaMalloc outside the pool, for data that lives as long as a run
// (the training set resident on the GPU); DeviceError when the device has too little, naming the bytes wanted and
// free (memory the pool keeps for reuse does not count as free).
enum class MemorySource { pool, dedicated };

// CUDA device memory, taken at construction and given back by the destructor; DeviceError without a CUDA device.
class DeviceMemory {
 public:
  DeviceMemory(size_t bytes, MemorySource source);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  // Copies `bytes` bytes between host memory and data() + offset, in order after the ops queued before; the host
  // waits for the copy.
  void upload(size_t offset, const void* host, size_t bytes);
  void download(size_t offset, void* host, size_t bytes) const;

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  MemorySource source_;
};

// For libraries that queue work of their own on the GPU (NCCL). Each throws DeviceError without a CUDA device.
// Makes GPU `index` modulo the visible GPUs this process's device; call it before any other CUDA work.
void select_cuda_device(int index);
// The stream every op is queued on, as a cudaStream_t.
void* cuda_compute_stream();
// A CUDA stream of its own, ordered against the ops' stream by events: work queued on it after wait_for_compute()
// runs after every op queued before that call; ops queued after join_compute() run after everything queued on it
// before that call. Data-parallel training sums its gradients on one, overlapped with the backward pass.
class SideStream {
 public:
  SideStream();
  ~SideStream();  // waits for the stream's work (unchecked: destructors do not throw)
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  void wait_for_compute();
  void join_compute();
  void* native() const;  // the cudaStream_t

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// When the device reaches points of the work queued on it, to tell the device's time from the host's: mark(p)
// records point p behind the work queued so far; once the host has waited for that work (a synchronisation, or a
// read of a result queued after the mark), seconds(p, q) is the device time from point p to point q. It includes
// the device's idle time waiting for the host to queue the work between them: where it is no longer than the host's
// time between the two marks, the device kept up with the host. The CPU's work is done when queued: there a point is
// the host's clock at mark(). Marks may be taken again (the next step's).
class DeviceClock {
 public:
  DeviceClock(Device device, size_t points);
  ~DeviceClock();
  DeviceClock(const DeviceClock&) = delete;
  DeviceClock& operator=(const DeviceClock&) = delete;
  void mark(size_t point);
  // Error for a point out of range or never marked; DeviceError where the device has not reached a point yet.
  double seconds(size_t from, size_t to) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Work queued on the ops' stream recorded once as a CUDA graph and then replayed (a training step whose host work
// would otherwise cost more than its device time). record(work) runs `work` with the ops recorded, not run; launch()
// runs the recording once more. What the recorded ops take is the graph's memory, not the pool's, at the same
// addresses every launch: `work` is recorded twice, first with the pool's memory to trace what it takes and when it
// gives it back (that recording is dropped), then into one range planned from the trace and backed before any op
// refers to it (copies and fills are checked against their addresses as they are recorded). So `work` must queue the
// same ops and ask for the same memory each time it runs, and its host state must not change by running. Tensors made
// by `work` and kept afterwards (a step's outputs) hold what the last launch wrote there, and should be released before
// the graph (its memory is given back when the last of them is). Everything a recorded op reads that changes from
// launch to launch (inputs, seeds, step constants) must be written, between launches, into memory that existed before
// record(). Recording fails where an op waits for the device or copies from the host: that op throws, record() ends the
// recording, drops it and rethrows, and the work can be queued as it is instead. CUDA only: DeviceError without the
// backend.
class CudaGraph {
 public:
  CudaGraph();
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  // Records `work` and makes it runnable; DeviceError (or what `work` threw) naming why it cannot be.
  void record(const std::function<void()>& work);
  void launch();
  bool ready() const;  // record() succeeded
  // The recording's memory: the planned range's bytes, and the most its work had alive at once (the least any plan
  // could take).
  struct PlannedMemory {
    size_t bytes = 0;
    size_t most_alive = 0;
  };
  PlannedMemory planned_memory() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Brackets the work a profiler started with `--profile-from-start off` records (ncu, nsys).
void profiler_start();
void profiler_stop();

// The CUDA device, its architecture and memory and the loaded libraries' versions in one line ("cpu" in a build
// without the CUDA backend).
std::string backend_versions();

// The cuDNN algorithm chosen for each convolution run so far, largest workspace first; `traded`: a slower
// algorithm (by at most 3%) was kept for its smaller workspace.
struct ConvolutionChoice {
  size_t workspace_bytes = 0;
  std::string problem;
  bool traded = false;
};
std::vector<ConvolutionChoice> convolution_choices();
// One choice as the benchmark prints it.
std::string choice_line(const ConvolutionChoice& choice);
// One line per measured choice of a convolution's way (as it is or space-to-depth folded, cuDNN or the implicit
// GEMM): the pass and shapes, each way's device time and the way kept.
std::vector<std::string> convolution_measurements();
// Every choice's line, then every measurement's: what a process's convolutions ran on (empty without CUDA).
std::vector<std::string> convolution_report();

}  // namespace dsmil::device
