#include "datapath/reencrypt_copy.hpp"

#include "datapath/xts_cipher.hpp"
#include "util/unique_fd.hpp"

#include <luksforge/error.hpp>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

namespace luksforge::datapath {

namespace {

std::uint64_t size_of(int fd, const std::filesystem::path& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw Error(errno, "cannot stat " + path.string() + ": " + std::strerror(errno));
    if (S_ISREG(st.st_mode)) return static_cast<std::uint64_t>(st.st_size);
    std::uint64_t bytes = 0;
    if (S_ISBLK(st.st_mode) && ::ioctl(fd, BLKGETSIZE64, &bytes) == 0) return bytes;
    throw FormatError(path.string() + " is neither a regular file nor a block device");
}

// The writes to one new image. Aligned chunks go through O_DIRECT where the filesystem takes it: the data goes
// from our buffer to the disk without a copy through the page cache, nothing piles up as dirty pages for
// writeback to flush in one long stall at the fdatasync, and the page cache is not flooded with the image. Other
// writes (an unaligned tail, a filesystem without O_DIRECT) are buffered and their writeback started at once
// (sync_file_range), so the final fdatasync has little left to do. A 4096-byte page is only ever written one way:
// direct writes cover whole aligned pages, buffered ones the rest.
class ImageWriter {
public:
    explicit ImageWriter(int fd) : fd_(fd) {
        const std::string self = "/proc/self/fd/" + std::to_string(fd);
        direct_fd_ = ::open(self.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
        direct_ = direct_fd_ >= 0;
    }
    ImageWriter(const ImageWriter&) = delete;
    ImageWriter& operator=(const ImageWriter&) = delete;
    ~ImageWriter() noexcept {
        if (direct_fd_ >= 0) ::close(direct_fd_);
    }

    // Called from the lane's writer threads, several at once.
    void write(const std::uint8_t* data, std::size_t bytes, std::uint64_t offset) {
        constexpr std::uint64_t align = 4096;
        if (direct_ && offset % align == 0 && bytes % align == 0 &&
            reinterpret_cast<std::uintptr_t>(data) % align == 0) {
            while (bytes > 0) {
                const ssize_t n = ::pwrite(direct_fd_, data, bytes, static_cast<off_t>(offset));
                if (n < 0 && errno == EINTR) continue;
                if (n < 0 && errno == EINVAL) {
                    // The filesystem opened it but takes no direct writes of this alignment: buffered from now on.
                    direct_ = false;
                    break;
                }
                if (n < 0) throw Error(errno, std::string("cannot write the new image: ") + std::strerror(errno));
                if (n == 0 || n % align != 0) {
                    // A short direct write (nearly full disk): the rest buffered, which reports the error.
                    data += n;
                    bytes -= static_cast<std::size_t>(n);
                    offset += static_cast<std::uint64_t>(n);
                    break;
                }
                data += n;
                bytes -= static_cast<std::size_t>(n);
                offset += static_cast<std::uint64_t>(n);
            }
            if (bytes == 0) return;
        }
        write_exact(fd_, data, bytes, offset, "the new image");
        ::sync_file_range(fd_, static_cast<off_t>(offset), static_cast<off_t>(bytes), SYNC_FILE_RANGE_WRITE);
    }

    // Everything on disk (the direct writes' block allocations too), then the page cache it used let go.
    void sync() {
        if (::fdatasync(fd_) != 0) throw Error(errno, std::string("cannot sync the new image: ") + std::strerror(errno));
        ::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);
    }

private:
    int fd_;
    int direct_fd_ = -1;
    std::atomic<bool> direct_{false};
};

using Writers = std::vector<std::unique_ptr<ImageWriter>>;

// Bytes outside the volume go across unchanged (holes kept), to every output.
std::uint64_t copy_plain_range(int in, const Writers& writers, std::uint64_t begin, std::uint64_t end) {
    if (begin >= end) return 0;
    const std::vector<Extent> extents = data_extents(in, begin, end, 1);
    StreamPlan plan;
    plan.lanes = writers.size();
    plan.make_worker = [&plan] {
        return ChunkTransform([lanes = plan.lanes](std::uint8_t* data, std::size_t, std::uint64_t, std::uint8_t* const*,
                                                   const std::uint8_t** out) { std::fill(out, out + lanes, data); });
    };
    plan.write = [&writers, begin](std::size_t lane, const std::uint8_t* data, std::size_t bytes, std::uint64_t offset) {
        writers[lane]->write(data, bytes, begin + offset);
    };
    StreamOptions options;
    options.threads = 1;
    options.chunk_bytes = 1 << 20;
    return stream_extents(in, begin, extents, end - begin, 1, plan, options).bytes_transformed;
}

}  // namespace

std::uint64_t source_bytes(const std::filesystem::path& source) {
    detail::UniqueFd in(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
    if (in.fd < 0) throw Error(errno, "cannot open " + source.string() + ": " + std::strerror(errno));
    return size_of(in.fd, source);
}

OnePassStats reencrypt_copy(const OnePassCopy& copy, int out_fd) {
    return reencrypt_copies(copy, {OnePassOutput{out_fd, copy.new_key}});
}

OnePassStats reencrypt_copies(const OnePassCopy& copy, const std::vector<OnePassOutput>& outputs) {
    const auto started = std::chrono::steady_clock::now();
    if (copy.old_key == nullptr || outputs.empty()) throw FormatError("one-pass copy without keys or outputs");
    detail::UniqueFd in(::open(copy.source.c_str(), O_RDONLY | O_CLOEXEC));
    if (in.fd < 0) throw Error(errno, "cannot open " + copy.source.string() + ": " + std::strerror(errno));
    const std::uint64_t total = size_of(in.fd, copy.source);
    const std::uint64_t volume_end = copy.volume_bytes != 0 ? copy.volume_offset + copy.volume_bytes : total;
    const CipherSpec& spec = copy.layout.cipher;
    if (volume_end > total || copy.volume_offset + copy.layout.data_offset > volume_end)
        throw FormatError("the LUKS2 volume does not fit in " + copy.source.string());
    const std::uint64_t data_begin = copy.volume_offset + copy.layout.data_offset;
    if ((volume_end - data_begin) % spec.sector_size != 0)
        throw FormatError("the data area of " + copy.source.string() + " is not a whole number of " +
                          std::to_string(spec.sector_size) + "-byte sectors");
    // Every key is checked before anything is written.
    { XtsCipher check_old(spec, *copy.old_key, XtsCipher::Direction::decrypt); }
    for (const OnePassOutput& out : outputs) {
        if (out.new_key == nullptr) throw FormatError("one-pass output without a key");
        XtsCipher check_new(spec, *out.new_key, XtsCipher::Direction::encrypt);
        if (::ftruncate(out.fd, static_cast<off_t>(total)) != 0)
            throw Error(errno, std::string("cannot size the new image: ") + std::strerror(errno));
    }

    Writers writers;
    for (const OnePassOutput& out : outputs) writers.push_back(std::make_unique<ImageWriter>(out.fd));
    OnePassStats stats;
    stats.copied_bytes = copy_plain_range(in.fd, writers, 0, copy.volume_offset) +
                         copy_plain_range(in.fd, writers, volume_end, total);

    // The data area: decrypt once with the old key, encrypt with each new one, sector by sector on every core.
    const std::uint64_t data_bytes = volume_end - data_begin;
    const std::vector<Extent> extents =
        copy.keep_holes ? data_extents(in.fd, data_begin, volume_end, spec.sector_size)
                        : std::vector<Extent>{Extent{0, data_bytes}};
    const std::uint64_t iv_tweak = copy.layout.iv_tweak;
    StreamPlan plan;
    plan.lanes = outputs.size();
    plan.writers_per_lane = 2;  // two direct writes in flight per image keep the disk busy between them
    // Each output but the last encrypts a copy of the plaintext; the last encrypts it in place.
    plan.scratch_buffers = outputs.size() - 1;
    plan.make_worker = [&]() -> ChunkTransform {
        auto decrypt = std::make_shared<XtsCipher>(spec, *copy.old_key, XtsCipher::Direction::decrypt);
        auto encrypt = std::make_shared<std::vector<XtsCipher>>();
        for (const OnePassOutput& out : outputs) encrypt->emplace_back(spec, *out.new_key, XtsCipher::Direction::encrypt);
        return [decrypt, encrypt, iv_tweak](std::uint8_t* data, std::size_t bytes, std::uint64_t offset,
                                            std::uint8_t* const* scratch, const std::uint8_t** out) {
            const std::uint64_t iv = iv_tweak + offset / 512;
            decrypt->transform(data, bytes, iv);
            const std::size_t last = encrypt->size() - 1;
            for (std::size_t k = 0; k < last; ++k) {
                std::memcpy(scratch[k], data, bytes);
                (*encrypt)[k].transform(scratch[k], bytes, iv);
                out[k] = scratch[k];
            }
            (*encrypt)[last].transform(data, bytes, iv);
            out[last] = data;
        };
    };
    plan.write = [&writers, data_begin](std::size_t lane, const std::uint8_t* data, std::size_t bytes,
                                        std::uint64_t offset) { writers[lane]->write(data, bytes, data_begin + offset); };
    const StreamResult result = stream_extents(in.fd, data_begin, extents, data_bytes, spec.sector_size, plan, copy.stream);
    stats.data_bytes = result.bytes_transformed;
    stats.hole_bytes = result.bytes_skipped;
    stats.threads = result.threads;
    for (const auto& writer : writers) writer->sync();
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return stats;
}

}  // namespace luksforge::datapath
