// Internals shared by the checkpoint readers and writers (io/pth.cpp, io/safetensors.cpp,
// io/rwkvcpp.cpp, io/checkpoint.cpp). Tests use write_pth's force_zip64 to exercise the ZIP64 reading path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "rwkv/checkpoint.h"
#include "rwkv/file_io.h"

namespace rwkv::io {

using Owners = std::vector<std::shared_ptr<const void>>;

Checkpoint read_pth(std::shared_ptr<MappedFile> file);
Checkpoint read_safetensors(std::shared_ptr<MappedFile> file);
// True when the file starts like a safetensors file: a header length, then '{'.
bool looks_like_safetensors(const MappedFile& file);
// rwkv.cpp model files (spec §7.1): a 24-byte header, then tensor records until the end.
Checkpoint read_rwkvcpp(std::shared_ptr<MappedFile> file);
// True when the file starts with rwkv.cpp's magic (u32 0x67676d66, bytes "fmgg").
bool looks_like_rwkvcpp(const MappedFile& file);

// save_pth, optionally with ZIP64 records even where they are not needed.
void write_pth(const std::string& path, const std::vector<TensorView>& tensors, bool force_zip64);

// A zeroed buffer of `bytes` bytes, 8-byte aligned, kept alive by `owners`. Throws an
// rwkv::Error naming `what` when memory runs out.
uint8_t* new_buffer(size_t bytes, Owners& owners, const std::string& what);
// Product of the dimensions; throws (naming `what`) on a negative dimension or overflow.
int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what);
// Converts n float64 values at src (any alignment) to a new fp32 buffer in `owners`.
const float* f64_to_f32(const uint8_t* src, size_t n, Owners& owners, const std::string& what);
// Strict UTF-8: no overlong forms, surrogates or code points past U+10FFFF.
bool valid_utf8(std::string_view s);
// Throws unless tensors can be saved: unique valid UTF-8 names, data for every byte, and no
// quantized tensor unless allowed (then with whole blocks per row).
void check_tensors_to_save(const std::string& path, const std::vector<TensorView>& tensors,
                           bool allow_quantized = false);

}  // namespace rwkv::io
