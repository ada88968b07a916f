// The CUDA runtime services the device-independent tensor code needs: memory from the stream-ordered
// pool, copies, fills and dtype conversion. Built only with the CUDA backend (DSMIL_WITH_CUDA).
#pragma once

#include <cstddef>

#include "tensor/tensor.h"

namespace dsmil::cuda {

bool device_available();           // a usable CUDA device is present
void* device_alloc(size_t bytes);  // cudaMallocAsync on the library stream (retained pool)
void device_free(void* ptr);       // cudaFreeAsync on the library stream
// Copy between any two of host and device memory; synchronous with respect to the host when host memory
// is involved, stream-ordered (asynchronous) from device to device.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void fill(Tensor& t, float value);          // F32, BF16 (rounded) or I32 (truncated)
Tensor convert(const Tensor& t, DType to);  // F32 <-> BF16 on the device
void synchronize();
// Around the recording of the stream into a CUDA graph (device::CudaGraph): from begin_capture_tracking on, the pool
// memory the recorded work takes and gives back is tracked. capture_frees_other_memory: the work gave back memory it
// did not take (the graph would free another tensor's memory at every launch). end_capture_tracking stops tracking;
// where the recording is dropped (never launched), the memory it took and kept was never allocated, and the frees of
// its tensors are skipped.
void begin_capture_tracking();
bool capture_frees_other_memory();
void end_capture_tracking(bool recording_kept);
// Device memory outside the pool (cudaMalloc), for device::DeviceMemory: DeviceError naming the bytes wanted and
// free when the device has too little. free_outside_pool never throws (it runs in destructors).
void* allocate_outside_pool(size_t bytes);
void free_outside_pool(void* memory) noexcept;
// Brackets the work a profiler started with `--profile-from-start off` records (ncu, nsys).
void profiler_start();
void profiler_stop();

}  // namespace dsmil::cuda
