// Typed errors of the library. Library code throws these and never exits: the caller (the `dsmil`
// command, a test) decides what a failure means.
#pragma once

#include <stdexcept>
#include <string>

namespace dsmil {

// Base of every error dsmil3d throws on purpose.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// An op was given tensors of shapes, dtypes or devices it does not accept.
struct ShapeError : Error {
  using Error::Error;
};
// A CUDA runtime, cuDNN or cuBLAS call failed; the message names the call, the op and the shapes.
struct DeviceError : Error {
  using Error::Error;
};
// A file (checkpoint, config, image) is missing, malformed or of the wrong version.
struct FormatError : Error {
  using Error::Error;
};

}  // namespace dsmil
