// The CUDA runtime services the device-independent tensor code needs: memory from the stream-ordered
// pool, copies, fills and dtype conversion. Built only with the CUDA backend (DSMIL_WITH_CUDA).
#pragma once

#include <cstddef>

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
// The memory of a recording of the stream into a CUDA graph (device::CudaGraph). From begin_recording_memory on, what
// the recorded work takes comes from an address range reserved for the recording, laid out best-fit as the work takes
// and gives back: the graph holds no allocation nodes, and its memory is what the recording held at its fullest.
// recording_frees_other_memory: the work gave back memory from elsewhere (the graph would free another tensor's memory
// at every launch). end_recording_memory stops the taking; for a recording kept it backs the range with physical
// memory up to that high water (DeviceError where the device has too little). release_recording_memory: the graph is
// gone; the range is given back when the last tensor made in it is freed (a dropped recording's never had memory).
struct RecordingMemory;
RecordingMemory* begin_recording_memory();
bool recording_frees_other_memory();
void end_recording_memory(RecordingMemory* memory, bool kept);
void release_recording_memory(RecordingMemory* memory) noexcept;
// Device memory outside the pool (cudaMalloc), for device::DeviceMemory: DeviceError naming the bytes wanted and
// free when the device has too little. free_outside_pool never throws (it runs in destructors).
void* allocate_outside_pool(size_t bytes);
void free_outside_pool(void* memory) noexcept;
// Brackets the work a profiler started with `--profile-from-start off` records (ncu, nsys).
void profiler_start();
void profiler_stop();

}  // namespace dsmil::cuda
