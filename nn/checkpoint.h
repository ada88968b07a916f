// Checkpoint files: a versioned binary of named tensors plus a JSON metadata text (the resolved
// config, epoch, optimizer step, RNG state...). Layout, little-endian:
//   "DSMILCKP" | u32 version | u64 metadata bytes | metadata | u64 tensor count |
//   per tensor: u32 name bytes | name | u8 dtype | u8 ndim | i64 dims[ndim] | raw data |
//   u32 CRC-32 of everything before it.
// Loading checks the magic, the version, the CRC, and that every expected tensor is there with its shape.
#pragma once

#include <string>
#include <vector>

#include "nn/module.h"

namespace dsmil::nn {

constexpr uint32_t kCheckpointVersion = 1;

struct CheckpointTensor {
  std::string name;
  Tensor value;  // on the CPU
};

struct Checkpoint {
  std::string metadata;  // JSON text
  std::vector<CheckpointTensor> tensors;
};

// Written to `path + ".tmp"` then renamed, so a killed process never leaves a half file under `path`.
void save_checkpoint(const std::string& path, const Checkpoint& ckpt);
Checkpoint load_checkpoint(const std::string& path);

// Snapshot of named state (parameters, buffers, optimizer moments) and its restoration; restoring
// copies values into the existing tensors (keeping their devices) and fails on a missing name or a
// shape mismatch.
void add_state(Checkpoint& ckpt, const std::string& prefix, const std::vector<NamedBuffer>& state);
void add_parameters(Checkpoint& ckpt, const std::string& prefix, const std::vector<NamedParameter>& params);
void restore_state(const Checkpoint& ckpt, const std::string& prefix, const std::vector<NamedBuffer>& state);
void restore_parameters(const Checkpoint& ckpt, const std::string& prefix, const std::vector<NamedParameter>& params);

}  // namespace dsmil::nn
