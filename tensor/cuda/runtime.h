// The CUDA runtime services the device-independent tensor code needs: memory from the stream-ordered
// pool, copies, fills and dtype conversion. Built only with the CUDA backend (DSMIL_WITH_CUDA).
#pragma once

#include <cstddef>
#include <optional>

#include "tensor/tensor.h"

namespace dsmil::cuda {

bool device_available();           // a usable CUDA device is present
void* device_alloc(size_t bytes);  // cudaMallocAsync on the library stream (retained pool), or a recording's memory
void device_free(void* ptr);       // cudaFreeAsync on the library stream, or back to a recording's layout
// Copy between any two of host and device memory; synchronous with respect to the host when host memory
// is involved, stream-ordered (asynchronous) from device to device.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void fill(Tensor& t, float value);          // F32, BF16 (rounded) or I32 (truncated)
Tensor convert(const Tensor& t, DType to);  // F32 <-> BF16 on the device
void synchronize();
// The memory of a recording of the stream into a CUDA graph (device::CudaGraph): an address range, reserved by
// reserve_recording_memory as large as the device's memory, and backed with physical memory for its first
// `backed_bytes` (rounded up to the mapping granularity; none where nullopt: a recording that only lays its memory out
// and is dropped). Between start_recording_into and stop_recording_into, what the recorded work takes comes from the
// range, laid out best-fit as the work takes and gives back (the graph holds no allocation nodes);
// stop_recording_into says whether the work gave back memory from elsewhere (the graph would free another tensor's
// memory at every launch). recording_high_water: the layout's extent, what the recording held at its fullest.
// release_recording_memory: the graph is gone; the range is given back when the last tensor made in it is freed.
struct RecordingMemory;
RecordingMemory* reserve_recording_memory(std::optional<size_t> backed_bytes);
void start_recording_into(RecordingMemory* memory);
bool stop_recording_into(RecordingMemory* memory);
size_t recording_high_water(const RecordingMemory* memory);
void release_recording_memory(RecordingMemory* memory) noexcept;
// Device memory outside the pool (cudaMalloc), for device::DeviceMemory: DeviceError naming the bytes wanted and
// free when the device has too little. free_outside_pool never throws (it runs in destructors).
void* allocate_outside_pool(size_t bytes);
void free_outside_pool(void* memory) noexcept;
// Brackets the work a profiler started with `--profile-from-start off` records (ncu, nsys).
void profiler_start();
void profiler_stop();

}  // namespace dsmil::cuda
