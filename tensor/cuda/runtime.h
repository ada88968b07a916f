// The CUDA runtime services the device-independent tensor code needs: memory from the stream-ordered
// pool, copies, fills and dtype conversion. Built only with the CUDA backend (DSMIL_WITH_CUDA).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "tensor/memory_plan.h"
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
// The memory of a recording of the stream into a CUDA graph (device::CudaGraph), recorded twice. Between
// start_recording_into and stop_recording_into, the first pass takes pool memory as the work asks and traces it (that
// recording is dropped; what it kept past its end was never allocated, and the frees of its tensors are skipped).
// place_recording_memory plans the trace (tensor/memory_plan.h) into one address range backed by exactly the plan's
// extent; the second pass then gives each allocation its planned place (the graph holds no allocation nodes).
// stop_recording_into says why the recording cannot be kept, where it cannot: the work gave back memory from elsewhere
// (the graph would free another tensor's memory at every launch), or the second pass took or gave back its memory
// unlike the first. release_recording_memory: the graph is gone; the range is given back when the last tensor made in
// it is freed.
struct RecordingMemory;
RecordingMemory* new_recording_memory();
void start_recording_into(RecordingMemory* memory);
std::optional<std::string> stop_recording_into(RecordingMemory* memory);
void place_recording_memory(RecordingMemory* memory);
const MemoryPlan& recording_plan(const RecordingMemory* memory);
void release_recording_memory(RecordingMemory* memory) noexcept;
// Device memory outside the pool (cudaMalloc), for device::DeviceMemory: DeviceError naming the bytes wanted and
// free when the device has too little. free_outside_pool never throws (it runs in destructors).
void* allocate_outside_pool(size_t bytes);
void free_outside_pool(void* memory) noexcept;
// Brackets the work a profiler started with `--profile-from-start off` records (ncu, nsys).
void profiler_start();
void profiler_stop();

}  // namespace dsmil::cuda
