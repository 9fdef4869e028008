#include "datapath/instance_header.hpp"

#include "datapath/sector_stream.hpp"

#include <luksforge/error.hpp>

#include "util/cryptsetup_util.hpp"
#include "util/unique_fd.hpp"

#include <libcryptsetup.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace luksforge::datapath {

namespace {

struct CryptFree {
    void operator()(crypt_device* cd) const noexcept { crypt_free(cd); }
};

}  // namespace

void format_instance_header(const std::filesystem::path& path, std::uint64_t volume_bytes, const SegmentLayout& layout,
                            const SecretBuffer& volume_key) {
    if (layout.data_offset % 4096 != 0)
        throw FormatError("the data offset " + std::to_string(layout.data_offset) + " is not a multiple of 4096");
    {
        detail::UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
        if (fd.fd < 0) throw Error(errno, "cannot create " + path.string() + ": " + std::strerror(errno));
        ::fchmod(fd.fd, 0600);
        if (::ftruncate(fd.fd, static_cast<off_t>(volume_bytes)) != 0)
            throw Error(errno, "cannot size " + path.string() + ": " + std::strerror(errno));
    }
    auto guard = detail::cryptsetup_guard();
    crypt_device* raw = nullptr;
    detail::clear_crypt_error();
    detail::check_crypt(crypt_init(&raw, path.c_str()), "cannot open " + path.string());
    std::unique_ptr<crypt_device, CryptFree> cd(raw);
    detail::attach_log_callback(raw);
    if (layout.metadata_bytes != 0 || layout.keyslots_bytes != 0)
        detail::check_crypt(crypt_set_metadata_size(raw, layout.metadata_bytes, layout.keyslots_bytes),
                            "cannot set the LUKS2 metadata sizes");
    detail::check_crypt(crypt_set_data_offset(raw, layout.data_offset / 512), "cannot set the data offset");
    crypt_pbkdf_type digest_pbkdf{};
    digest_pbkdf.type = CRYPT_KDF_PBKDF2;
    digest_pbkdf.hash = "sha256";
    digest_pbkdf.iterations = 1000;
    digest_pbkdf.flags = CRYPT_PBKDF_NO_BENCHMARK;
    crypt_params_luks2 params{};
    params.pbkdf = &digest_pbkdf;
    params.sector_size = layout.cipher.sector_size;
    params.label = layout.label.empty() ? nullptr : layout.label.c_str();
    params.subsystem = layout.subsystem.empty() ? nullptr : layout.subsystem.c_str();
    detail::check_crypt(crypt_format(raw, CRYPT_LUKS2, layout.cipher.cipher.c_str(), layout.cipher.mode.c_str(),
                                     layout.uuid.empty() ? nullptr : layout.uuid.c_str(), volume_key.chars(),
                                     volume_key.size(), &params),
                        "cannot format the instance header");
    if (crypt_get_data_offset(raw) * 512 != layout.data_offset)
        throw FormatError("libcryptsetup placed the instance's data at another offset than the base's");
    if (layout.activation_flags != 0)
        detail::check_crypt(crypt_persistent_flags_set(raw, CRYPT_FLAGS_ACTIVATION, layout.activation_flags),
                            "cannot copy the persistent activation flags");
}

void write_instance_header(const std::filesystem::path& header_file, int out_fd, std::uint64_t volume_offset,
                           std::uint64_t data_offset) {
    detail::UniqueFd in(::open(header_file.c_str(), O_RDONLY | O_CLOEXEC));
    if (in.fd < 0) throw Error(errno, "cannot open " + header_file.string() + ": " + std::strerror(errno));
    constexpr std::size_t block = 64 << 10;
    std::vector<std::uint8_t> buffer(block);
    for (const Extent& e : data_extents(in.fd, 0, data_offset, block)) {
        for (std::uint64_t done = 0; done < e.length; done += block) {
            const std::size_t bytes = static_cast<std::size_t>(std::min<std::uint64_t>(block, e.length - done));
            read_exact(in.fd, buffer.data(), bytes, e.offset + done, "the instance header");
            if (std::all_of(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(bytes),
                            [](std::uint8_t b) { return b == 0; }))
                continue;
            write_exact(out_fd, buffer.data(), bytes, volume_offset + e.offset + done, "the instance header");
        }
    }
    if (::fsync(out_fd) != 0) throw Error(errno, std::string("cannot sync the instance: ") + std::strerror(errno));
}

}  // namespace luksforge::datapath
