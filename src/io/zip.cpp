#include "io/zip.h"

#include <array>
#include <cstring>

#include "rwkv/error.h"

namespace rwkv::io {

namespace {

// Record signatures and fixed sizes (APPNOTE.TXT 4.3).
constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr size_t kLocalSize = 30;
constexpr size_t kCentralSize = 46;
constexpr size_t kEndSize = 22;
constexpr size_t kZip64EndSize = 56;
constexpr size_t kZip64LocatorSize = 20;
constexpr size_t kMaxComment = 0xffff;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kPaddingExtraId = 0x4246;  // "FB": the id torch uses for alignment padding
constexpr uint32_t kSaturated32 = 0xffffffffu;
constexpr uint16_t kSaturated16 = 0xffffu;
constexpr uint64_t kAlignment = 64;  // torch aligns storages so they can be mapped in place
constexpr uint16_t kDosDate = 0x21;  // 1980-01-01: fixed, so equal inputs give equal files

uint16_t le16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t le32(const uint8_t* p) { return uint32_t(le16(p)) | uint32_t(le16(p + 2)) << 16; }
uint64_t le64(const uint8_t* p) { return uint64_t(le32(p)) | uint64_t(le32(p + 4)) << 32; }

void put16(std::string& out, uint16_t v) {
  out += char(v & 0xff);
  out += char(v >> 8);
}
void put32(std::string& out, uint32_t v) {
  put16(out, uint16_t(v));
  put16(out, uint16_t(v >> 16));
}
void put64(std::string& out, uint64_t v) {
  put32(out, uint32_t(v));
  put32(out, uint32_t(v >> 32));
}

// Slicing-by-8 tables: table[0] is the classic byte-wise table, table[k] advances k more bytes.
using CrcTables = std::array<std::array<uint32_t, 256>, 8>;
constexpr CrcTables make_crc_tables() {
  CrcTables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    t[0][i] = c;
  }
  for (size_t k = 1; k < 8; ++k)
    for (size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  return t;
}
constexpr CrcTables kCrcTables = make_crc_tables();

// The archive bytes with bounds-checked access; every error names the file.
class Archive {
 public:
  Archive(const uint8_t* data, size_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  // Pointer to [offset, offset + length), which must lie inside the file.
  const uint8_t* at(uint64_t offset, uint64_t length, const std::string& what) const {
    if (offset > size_ || length > size_ - offset)
      fail(path_, ": corrupt or truncated zip: ", what, " (offset ", offset, ", ", length,
           " bytes) runs past the end of the file (", size_, " bytes)");
    return data_ + offset;
  }
  void expect_signature(const uint8_t* p, uint32_t signature, const std::string& what) const {
    if (le32(p) != signature) fail(path_, ": corrupt zip: bad signature of ", what);
  }
  size_t size() const { return size_; }
  const uint8_t* data() const { return data_; }
  const std::string& path() const { return path_; }

 private:
  const uint8_t* data_;
  size_t size_;
  const std::string& path_;
};

struct Directory {
  uint64_t entries;
  uint64_t size;
  uint64_t offset;
};

// The end of central directory record sits in the last 22 + 65535 bytes (it may be followed by
// a comment); the last candidate whose comment length fits the file wins.
size_t find_end_record(const Archive& archive) {
  if (archive.size() < kEndSize)
    fail(archive.path(), ": truncated zip: too short for an end of central directory record");
  const size_t last = archive.size() - kEndSize;
  const size_t lowest = last > kMaxComment ? last - kMaxComment : 0;
  for (size_t pos = last + 1; pos-- > lowest;) {
    const uint8_t* p = archive.data() + pos;
    if (le32(p) == kEndSig && le16(p + 20) <= last - pos) return pos;
  }
  fail(archive.path(), ": corrupt or truncated zip: no end of central directory record");
}

Directory read_end_records(const Archive& archive, size_t end_pos) {
  const uint8_t* end = archive.data() + end_pos;
  const uint16_t disk = le16(end + 4);
  const uint16_t directory_disk = le16(end + 6);
  auto single_disk = [](uint16_t n) { return n == 0 || n == kSaturated16; };
  if (!single_disk(disk) || !single_disk(directory_disk))
    fail(archive.path(), ": multi-part zip archives are not supported");
  Directory dir{le16(end + 10), le32(end + 12), le32(end + 16)};
  const bool zip64 =
      dir.entries == kSaturated16 || dir.size == kSaturated32 || dir.offset == kSaturated32;
  if (!zip64) return dir;
  // Saturated fields: the real values are in the ZIP64 end record, found via its locator.
  if (end_pos < kZip64LocatorSize)
    fail(archive.path(), ": corrupt zip: ZIP64 end of central directory locator is missing");
  const uint8_t* locator = end - kZip64LocatorSize;
  archive.expect_signature(locator, kZip64LocatorSig, "the ZIP64 end of central directory locator");
  const uint8_t* record = archive.at(le64(locator + 8), kZip64EndSize, "ZIP64 end record");
  archive.expect_signature(record, kZip64EndSig, "the ZIP64 end of central directory record");
  return {le64(record + 32), le64(record + 40), le64(record + 48)};
}

// Replaces the saturated 32-bit fields of a central directory entry with the 64-bit values of
// its ZIP64 extra field, which holds exactly the saturated ones, in this order.
void apply_zip64_extra(const Archive& archive, const std::string& name, const uint8_t* extra,
                       size_t length, uint64_t& uncompressed, uint64_t& compressed,
                       uint64_t& local_offset) {
  size_t pos = 0;
  while (length - pos >= 4) {
    const uint16_t id = le16(extra + pos);
    const uint16_t field_length = le16(extra + pos + 2);
    pos += 4;
    if (field_length > length - pos)
      fail(archive.path(), ": corrupt zip: extra field of entry '", name, "' is too long");
    if (id == kZip64ExtraId) {
      size_t at = pos;
      for (uint64_t* field : {&uncompressed, &compressed, &local_offset}) {
        if (*field != kSaturated32) continue;
        if (pos + field_length - at < 8)
          fail(archive.path(), ": corrupt zip: ZIP64 extra field of entry '", name,
               "' is too short");
        *field = le64(extra + at);
        at += 8;
      }
    }
    pos += field_length;
  }
}

// Parses the central directory entry at p (inside the directory's `available` bytes), returning
// the entry and setting `length` to the entry's size in the directory.
ZipEntry read_central_entry(const Archive& archive, const uint8_t* p, uint64_t available,
                            uint64_t& length) {
  if (available < kCentralSize)
    fail(archive.path(), ": corrupt zip: central directory is shorter than its entry count");
  archive.expect_signature(p, kCentralSig, "a central directory entry");
  const uint16_t flags = le16(p + 8);
  const uint16_t name_length = le16(p + 28);
  const uint16_t extra_length = le16(p + 30);
  const uint16_t comment_length = le16(p + 32);
  length = kCentralSize + name_length + extra_length + comment_length;
  if (length > available)
    fail(archive.path(), ": corrupt zip: central directory entry runs past the directory");

  ZipEntry entry;
  entry.name.assign(reinterpret_cast<const char*>(p + kCentralSize), name_length);
  entry.method = le16(p + 10);
  uint64_t compressed = le32(p + 20);
  uint64_t uncompressed = le32(p + 24);
  uint64_t local_offset = le32(p + 42);
  apply_zip64_extra(archive, entry.name, p + kCentralSize + name_length, extra_length,
                    uncompressed, compressed, local_offset);
  if (flags & 1) fail(archive.path(), ": zip entry '", entry.name, "' is encrypted");
  if (entry.method == 0 && compressed != uncompressed)
    fail(archive.path(), ": corrupt zip: stored entry '", entry.name, "' has compressed size ",
         compressed, " but size ", uncompressed);
  entry.size = compressed;

  // The data follows the LOCAL header, whose name and extra lengths may differ from the central
  // ones (torch pads the local extra field to align the data).
  const std::string local_what = "the local header of '" + entry.name + "'";
  const uint8_t* local = archive.at(local_offset, kLocalSize, local_what);
  archive.expect_signature(local, kLocalSig, local_what);
  entry.data_offset = local_offset + kLocalSize + le16(local + 26) + le16(local + 28);
  archive.at(entry.data_offset, entry.size, "data of entry '" + entry.name + "'");
  return entry;
}

}  // namespace

uint32_t crc32(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  const CrcTables& t = kCrcTables;
  crc = ~crc;
  for (; size >= 8; p += 8, size -= 8) {
    const uint32_t lo = le32(p) ^ crc;
    const uint32_t hi = le32(p + 4);
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
  }
  for (; size > 0; ++p, --size) crc = t[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
  return ~crc;
}

std::vector<ZipEntry> read_zip_directory(const uint8_t* data, size_t size,
                                         const std::string& path) {
  const Archive archive(data, size, path);
  const Directory dir = read_end_records(archive, find_end_record(archive));
  const uint8_t* p = archive.at(dir.offset, dir.size, "central directory");
  // Bounds the reservation below by the file size, whatever the entry count claims.
  if (dir.entries > dir.size / kCentralSize)
    fail(path, ": corrupt zip: ", dir.entries, " entries cannot fit in a central directory of ",
         dir.size, " bytes");
  std::vector<ZipEntry> entries;
  entries.reserve(size_t(dir.entries));
  uint64_t used = 0;
  for (uint64_t i = 0; i < dir.entries; ++i) {
    uint64_t length = 0;
    entries.push_back(read_central_entry(archive, p + used, dir.size - used, length));
    used += length;
  }
  return entries;
}

const uint8_t* stored_entry_data(const uint8_t* archive, const ZipEntry& entry,
                                 const std::string& path) {
  if (entry.method != 0)
    fail(path, ": zip entry '", entry.name, "' is compressed (method ", entry.method,
         entry.method == 8 ? ", deflate" : "",
         "); only stored (uncompressed) entries are supported, as torch.save writes them");
  return archive + entry.data_offset;
}

void ZipWriter::append(const void* data, size_t size) {
  if (size > 0) parts_.push_back({data, size});
  offset_ += size;
}

void ZipWriter::append_owned(std::string bytes) {
  owned_.push_back(std::move(bytes));
  append(owned_.back().data(), owned_.back().size());
}

void ZipWriter::add(const std::string& name, const void* data, size_t size) {
  if (name.size() > 0xffff) fail("zip entry name too long: ", name.substr(0, 64), "...");
  const bool zip64 = force_zip64_ || size >= kSaturated32;
  const uint32_t crc = crc32(data, size);
  const size_t zip64_extra = zip64 ? 20 : 0;
  // Pads with an extra field so that the data starts on a kAlignment boundary.
  const uint64_t unpadded = offset_ + kLocalSize + name.size() + zip64_extra + 4;
  const size_t padding = size_t((kAlignment - unpadded % kAlignment) % kAlignment);

  std::string header;
  put32(header, kLocalSig);
  put16(header, zip64 ? 45 : 20);  // version needed to extract
  put16(header, 0);                // flags
  put16(header, 0);                // method: stored
  put16(header, 0);                // time
  put16(header, kDosDate);
  put32(header, crc);
  put32(header, zip64 ? kSaturated32 : uint32_t(size));  // compressed size
  put32(header, zip64 ? kSaturated32 : uint32_t(size));  // uncompressed size
  put16(header, uint16_t(name.size()));
  put16(header, uint16_t(zip64_extra + 4 + padding));
  header += name;
  if (zip64) {
    put16(header, kZip64ExtraId);
    put16(header, 16);
    put64(header, size);
    put64(header, size);
  }
  put16(header, kPaddingExtraId);
  put16(header, uint16_t(padding));
  header.append(padding, 'Z');

  written_.push_back({name, crc, size, offset_});
  append_owned(std::move(header));
  append(data, size);
}

std::vector<ByteSpan> ZipWriter::finish() {
  const uint64_t directory_offset = offset_;
  std::string directory;
  for (const Written& entry : written_) {
    const bool zip64 =
        force_zip64_ || entry.size >= kSaturated32 || entry.header_offset >= kSaturated32;
    put32(directory, kCentralSig);
    put16(directory, zip64 ? 45 : 20);  // version made by
    put16(directory, zip64 ? 45 : 20);  // version needed to extract
    put16(directory, 0);                // flags
    put16(directory, 0);                // method: stored
    put16(directory, 0);                // time
    put16(directory, kDosDate);
    put32(directory, entry.crc);
    put32(directory, zip64 ? kSaturated32 : uint32_t(entry.size));
    put32(directory, zip64 ? kSaturated32 : uint32_t(entry.size));
    put16(directory, uint16_t(entry.name.size()));
    put16(directory, zip64 ? 28 : 0);  // extra length
    put16(directory, 0);               // comment length
    put16(directory, 0);               // disk number
    put16(directory, 0);               // internal attributes
    put32(directory, 0);               // external attributes
    put32(directory, zip64 ? kSaturated32 : uint32_t(entry.header_offset));
    directory += entry.name;
    if (zip64) {  // all three fields are saturated, so all three are here
      put16(directory, kZip64ExtraId);
      put16(directory, 24);
      put64(directory, entry.size);
      put64(directory, entry.size);
      put64(directory, entry.header_offset);
    }
  }
  const uint64_t directory_size = directory.size();
  append_owned(std::move(directory));

  const uint64_t count = written_.size();
  const bool zip64 = force_zip64_ || count >= kSaturated16 || directory_size >= kSaturated32 ||
                     directory_offset >= kSaturated32;
  std::string end;
  if (zip64) {
    const uint64_t record_offset = offset_;
    put32(end, kZip64EndSig);
    put64(end, kZip64EndSize - 12);  // size of the rest of the record
    put16(end, 45);
    put16(end, 45);
    put32(end, 0);  // this disk
    put32(end, 0);  // disk of the central directory
    put64(end, count);
    put64(end, count);
    put64(end, directory_size);
    put64(end, directory_offset);
    put32(end, kZip64LocatorSig);
    put32(end, 0);
    put64(end, record_offset);
    put32(end, 1);  // total disks
  }
  put32(end, kEndSig);
  put16(end, 0);
  put16(end, 0);
  put16(end, zip64 ? kSaturated16 : uint16_t(count));
  put16(end, zip64 ? kSaturated16 : uint16_t(count));
  put32(end, zip64 ? kSaturated32 : uint32_t(directory_size));
  put32(end, zip64 ? kSaturated32 : uint32_t(directory_offset));
  put16(end, 0);  // comment length
  append_owned(std::move(end));
  return std::move(parts_);
}

}  // namespace rwkv::io
