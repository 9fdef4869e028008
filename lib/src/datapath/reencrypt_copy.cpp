#include "datapath/reencrypt_copy.hpp"

#include "datapath/xts_cipher.hpp"

#include <luksforge/error.hpp>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

namespace luksforge::datapath {

namespace {

struct Fd {
    int fd = -1;
    explicit Fd(int f) noexcept : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() noexcept {
        if (fd >= 0) ::close(fd);
    }
};

std::uint64_t size_of(int fd, const std::filesystem::path& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw Error(errno, "cannot stat " + path.string() + ": " + std::strerror(errno));
    if (S_ISREG(st.st_mode)) return static_cast<std::uint64_t>(st.st_size);
    std::uint64_t bytes = 0;
    if (S_ISBLK(st.st_mode) && ::ioctl(fd, BLKGETSIZE64, &bytes) == 0) return bytes;
    throw FormatError(path.string() + " is neither a regular file nor a block device");
}

// Bytes outside the volume go across unchanged (holes kept).
std::uint64_t copy_plain_range(int in, int out, std::uint64_t begin, std::uint64_t end) {
    if (begin >= end) return 0;
    const std::vector<Extent> extents = data_extents(in, begin, end, 1);
    const WorkerFactory identity = [] { return ChunkWork([](std::uint8_t*, std::size_t, std::uint64_t) {}); };
    StreamOptions options;
    options.threads = 1;
    options.chunk_bytes = 1 << 20;
    return transform_extents(in, begin, out, begin, extents, end - begin, 1, identity, options).bytes_transformed;
}

}  // namespace

std::uint64_t source_bytes(const std::filesystem::path& source) {
    Fd in(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
    if (in.fd < 0) throw Error(errno, "cannot open " + source.string() + ": " + std::strerror(errno));
    return size_of(in.fd, source);
}

OnePassStats reencrypt_copy(const OnePassCopy& copy, int out_fd) {
    const auto started = std::chrono::steady_clock::now();
    if (copy.old_key == nullptr || copy.new_key == nullptr) throw FormatError("one-pass copy without keys");
    Fd in(::open(copy.source.c_str(), O_RDONLY | O_CLOEXEC));
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
    // Both keys are checked before anything is written.
    { XtsCipher check_old(spec, *copy.old_key, XtsCipher::Direction::decrypt); }
    { XtsCipher check_new(spec, *copy.new_key, XtsCipher::Direction::encrypt); }

    if (::ftruncate(out_fd, static_cast<off_t>(total)) != 0)
        throw Error(errno, std::string("cannot size the new image: ") + std::strerror(errno));

    OnePassStats stats;
    stats.copied_bytes = copy_plain_range(in.fd, out_fd, 0, copy.volume_offset) +
                         copy_plain_range(in.fd, out_fd, volume_end, total);

    // The data area: decrypt with the old key, encrypt with the new one, sector by sector on every core.
    const std::uint64_t data_bytes = volume_end - data_begin;
    const std::vector<Extent> extents =
        copy.keep_holes ? data_extents(in.fd, data_begin, volume_end, spec.sector_size)
                        : std::vector<Extent>{Extent{0, data_bytes}};
    const std::uint64_t iv_tweak = copy.layout.iv_tweak;
    const WorkerFactory make_worker = [&]() -> ChunkWork {
        auto decrypt = std::make_shared<XtsCipher>(spec, *copy.old_key, XtsCipher::Direction::decrypt);
        auto encrypt = std::make_shared<XtsCipher>(spec, *copy.new_key, XtsCipher::Direction::encrypt);
        return [decrypt, encrypt, iv_tweak](std::uint8_t* data, std::size_t bytes, std::uint64_t offset) {
            const std::uint64_t iv = iv_tweak + offset / 512;
            decrypt->transform(data, bytes, iv);
            encrypt->transform(data, bytes, iv);
        };
    };
    const StreamResult result =
        transform_extents(in.fd, data_begin, out_fd, data_begin, extents, data_bytes, spec.sector_size, make_worker,
                          copy.stream);
    stats.data_bytes = result.bytes_transformed;
    stats.hole_bytes = result.bytes_skipped;
    stats.threads = result.threads;
    if (::fdatasync(out_fd) != 0) throw Error(errno, std::string("cannot sync the new image: ") + std::strerror(errno));
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return stats;
}

}  // namespace luksforge::datapath
