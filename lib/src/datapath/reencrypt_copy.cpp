#include "datapath/reencrypt_copy.hpp"

#include "datapath/xts_cipher.hpp"

#include <luksforge/error.hpp>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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

// Bytes outside the volume go across unchanged (holes kept), to every output.
std::uint64_t copy_plain_range(int in, const std::vector<OnePassOutput>& outputs, std::uint64_t begin,
                               std::uint64_t end) {
    if (begin >= end) return 0;
    const std::vector<Extent> extents = data_extents(in, begin, end, 1);
    const WorkerFactory copy_to_all = [&] {
        return ChunkWork([&outputs, begin](std::uint8_t* data, std::size_t bytes, std::uint64_t offset) {
            for (const OnePassOutput& out : outputs) write_exact(out.fd, data, bytes, begin + offset, "the new image");
        });
    };
    StreamOptions options;
    options.threads = 1;
    options.chunk_bytes = 1 << 20;
    return stream_extents(in, begin, extents, end - begin, 1, copy_to_all, options).bytes_transformed;
}

}  // namespace

std::uint64_t source_bytes(const std::filesystem::path& source) {
    Fd in(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
    if (in.fd < 0) throw Error(errno, "cannot open " + source.string() + ": " + std::strerror(errno));
    return size_of(in.fd, source);
}

OnePassStats reencrypt_copy(const OnePassCopy& copy, int out_fd) {
    return reencrypt_copies(copy, {OnePassOutput{out_fd, copy.new_key}});
}

OnePassStats reencrypt_copies(const OnePassCopy& copy, const std::vector<OnePassOutput>& outputs) {
    const auto started = std::chrono::steady_clock::now();
    if (copy.old_key == nullptr || outputs.empty()) throw FormatError("one-pass copy without keys or outputs");
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
    // Every key is checked before anything is written.
    { XtsCipher check_old(spec, *copy.old_key, XtsCipher::Direction::decrypt); }
    for (const OnePassOutput& out : outputs) {
        if (out.new_key == nullptr) throw FormatError("one-pass output without a key");
        XtsCipher check_new(spec, *out.new_key, XtsCipher::Direction::encrypt);
        if (::ftruncate(out.fd, static_cast<off_t>(total)) != 0)
            throw Error(errno, std::string("cannot size the new image: ") + std::strerror(errno));
    }

    OnePassStats stats;
    stats.copied_bytes = copy_plain_range(in.fd, outputs, 0, copy.volume_offset) +
                         copy_plain_range(in.fd, outputs, volume_end, total);

    // The data area: decrypt once with the old key, encrypt with each new one, sector by sector on every core.
    const std::uint64_t data_bytes = volume_end - data_begin;
    const std::vector<Extent> extents =
        copy.keep_holes ? data_extents(in.fd, data_begin, volume_end, spec.sector_size)
                        : std::vector<Extent>{Extent{0, data_bytes}};
    const std::uint64_t iv_tweak = copy.layout.iv_tweak;
    const std::size_t chunk_bytes = std::max<std::size_t>(copy.stream.chunk_bytes, spec.sector_size);
    const WorkerFactory make_worker = [&]() -> ChunkWork {
        auto decrypt = std::make_shared<XtsCipher>(spec, *copy.old_key, XtsCipher::Direction::decrypt);
        auto encrypt = std::make_shared<std::vector<XtsCipher>>();
        for (const OnePassOutput& out : outputs) encrypt->emplace_back(spec, *out.new_key, XtsCipher::Direction::encrypt);
        // With several outputs each needs its own copy of the plaintext to encrypt; wiped when the worker ends.
        auto scratch = std::shared_ptr<std::uint8_t[]>(outputs.size() > 1 ? new std::uint8_t[chunk_bytes] : nullptr,
                                                       [chunk_bytes](std::uint8_t* p) {
                                                           if (p != nullptr) ::explicit_bzero(p, chunk_bytes);
                                                           delete[] p;
                                                       });
        return [decrypt, encrypt, scratch, iv_tweak, &outputs, data_begin](std::uint8_t* data, std::size_t bytes,
                                                                           std::uint64_t offset) {
            const std::uint64_t iv = iv_tweak + offset / 512;
            decrypt->transform(data, bytes, iv);
            for (std::size_t k = 0; k < outputs.size(); ++k) {
                std::uint8_t* target = data;
                if (k + 1 < outputs.size()) {  // the last output may use the plaintext buffer itself
                    std::memcpy(scratch.get(), data, bytes);
                    target = scratch.get();
                }
                (*encrypt)[k].transform(target, bytes, iv);
                write_exact(outputs[k].fd, target, bytes, data_begin + offset, "the new image");
            }
        };
    };
    const StreamResult result =
        stream_extents(in.fd, data_begin, extents, data_bytes, spec.sector_size, make_worker, copy.stream);
    stats.data_bytes = result.bytes_transformed;
    stats.hole_bytes = result.bytes_skipped;
    stats.threads = result.threads;
    for (const OnePassOutput& out : outputs)
        if (::fdatasync(out.fd) != 0) throw Error(errno, std::string("cannot sync the new image: ") + std::strerror(errno));
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return stats;
}

}  // namespace luksforge::datapath
