// rwkv::HostFloats (rwkv/model.h): page-locked where the CUDA runtime gives it, else new[].
#include <cstring>
#include <utility>

#include "model/page_locked.h"
#include "rwkv/model.h"

namespace rwkv {

HostFloats::HostFloats(size_t n, bool page_locked) : size_(n) {
  if (n == 0) return;
  if (page_locked) data_ = static_cast<float*>(model::alloc_page_locked(n * sizeof(float)));
  page_locked_ = data_ != nullptr;
  if (page_locked_) {
    std::memset(data_, 0, n * sizeof(float));
  } else {
    data_ = new float[n]();
  }
}

HostFloats::HostFloats(HostFloats&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      page_locked_(std::exchange(other.page_locked_, false)) {}

HostFloats& HostFloats::operator=(HostFloats&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    page_locked_ = std::exchange(other.page_locked_, false);
  }
  return *this;
}

HostFloats::~HostFloats() { release(); }

void HostFloats::release() {
  if (page_locked_) {
    model::free_page_locked(data_);
  } else {
    delete[] data_;
  }
  data_ = nullptr, size_ = 0, page_locked_ = false;
}

}  // namespace rwkv
